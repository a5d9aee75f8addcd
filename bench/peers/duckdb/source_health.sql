-- DuckDB peer of queries/source_health.sql. Changes: to_unixtime(x) -> floor(epoch(x)) (DataFusion's is whole seconds); careledger's local_date / local_day_start (days in Asia/Shanghai, its default zone) -> timezone('Asia/Shanghai', ...); percentile_cont(0.9) WITHIN GROUP -> quantile_cont; exact_rate(n, d) (careledger's exact rate) written out in integer arithmetic as CAST((n * 20000 + d) // (2 * d) AS DOUBLE) / 10000.
-- name: source_health
-- title_zh: 数据源健康状况
-- title_en: Source health: batches, rejects, timeliness
-- description: Per source: last batch, batches and rows accepted and rejected, Batch-Seq gaps, and for dated rows currently held (life events, services, group flags, registrations) the median and 90th-percentile lag in days from the event's date to its ingestion (the duty to update in time), the share of rows that landed in a frozen period (ingested on or after the 10th of the month following the event's month, when that month's figures are published), and orphans (rows of a person with no women record).
WITH b AS (
    SELECT source,
           max(committed_at) AS last_batch_at,
           count(*) AS batches,
           sum(rows_accepted) AS rows_accepted,
           sum(rows_rejected) AS rows_rejected
    FROM batches GROUP BY source
),
seq AS (
    SELECT source, sum(CASE WHEN prev IS NOT NULL AND batch_seq > prev + 1 THEN 1 ELSE 0 END) AS seq_gaps
    FROM (SELECT source, batch_seq, lag(batch_seq) OVER (PARTITION BY source ORDER BY batch_seq) AS prev
          FROM batches WHERE batch_seq IS NOT NULL) t
    GROUP BY source
),
dated AS (
    SELECT source, person_id, event_date AS d, ingested_at FROM life_events
    UNION ALL SELECT source, person_id, service_date, ingested_at FROM services
    UNION ALL SELECT source, person_id, valid_from, ingested_at FROM group_flags
    UNION ALL SELECT source, person_id, effective_date, ingested_at FROM registrations
),
lagged AS (
    SELECT d.source,
           (floor(epoch(d.ingested_at)) - floor(epoch(timezone('Asia/Shanghai', CAST(d.d AS TIMESTAMP))))) / 86400.0 AS lag_days,
           CASE WHEN CAST(timezone('Asia/Shanghai', d.ingested_at) AS DATE) >= CAST(date_trunc('month', d.d) + INTERVAL '1 month' + INTERVAL '9 days' AS DATE) THEN 1 ELSE 0 END AS frozen,
           CASE WHEN p.person_id IS NULL THEN 1 ELSE 0 END AS orphan
    FROM dated d LEFT JOIN people p ON p.person_id = d.person_id
),
t AS (
    SELECT source,
           count(*) AS dated_rows,
           round(median(lag_days), 1) AS lag_days_median,
           round(quantile_cont(lag_days, 0.9), 1) AS lag_days_p90,
           CAST(((sum(frozen)) * 20000 + (count(*))) // (2 * (count(*))) AS DOUBLE) / 10000 AS share_in_frozen_periods,
           sum(orphan) AS orphan_rows
    FROM lagged GROUP BY source
),
sources AS (
    SELECT code AS source, zh AS source_zh FROM codes WHERE list = 'sources'
)
SELECT s.source, s.source_zh,
       b.last_batch_at,
       coalesce(b.batches, 0) AS batches,
       coalesce(b.rows_accepted, 0) AS rows_accepted,
       coalesce(b.rows_rejected, 0) AS rows_rejected,
       coalesce(seq.seq_gaps, 0) AS seq_gaps,
       coalesce(t.dated_rows, 0) AS dated_rows,
       t.lag_days_median,
       t.lag_days_p90,
       t.share_in_frozen_periods,
       coalesce(t.orphan_rows, 0) AS orphan_rows
FROM sources s
LEFT JOIN b ON b.source = s.source
LEFT JOIN seq ON seq.source = s.source
LEFT JOIN t ON t.source = s.source
ORDER BY s.source
