-- name: source_health
-- title_zh: 数据源健康状况
-- title_en: Source health: batches, rejects, timeliness
-- description: Per source: last batch, batches and rows accepted and rejected, Batch-Seq gaps, and for dated rows currently held (life events, services, group flags, registrations) the median and 90th-percentile lag in days from the event's date to its ingestion (the duty to update in time), the share of rows that landed in a frozen period (ingested on or after the 10th of the month following the event's month, when that month's figures are published), and orphans (rows of a person with no women record). For a region-scoped token, batches, last_batch_at and rows_accepted count only the batches holding rows of women who lived in its scope and those rows, and rows_rejected and seq_gaps are NULL: rejected rows and sequence numbers cannot be attributed to a region. Rates are computed exactly (share_in_frozen_periods = rows in frozen periods / dated_rows) and rounded to 4 decimal places, halves away from zero. See docs/reports.md.
-- publish: labels source=sources
-- publish: exact lag_days_median lag_days_p90 | dated_rows
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
           (to_unixtime(d.ingested_at) - to_unixtime(local_day_start(d.d))) / 86400.0 AS lag_days,
           -- frozen_from(d): the 10th of the month after d's (= date_trunc('month', d) + 1 month + 9 days).
           CASE WHEN local_date(d.ingested_at) >= frozen_from(d.d) THEN 1 ELSE 0 END AS frozen,
           CASE WHEN p.person_id IS NULL THEN 1 ELSE 0 END AS orphan
    FROM dated d LEFT JOIN people p ON p.person_id = d.person_id
),
t AS (
    SELECT source,
           count(*) AS dated_rows,
           round(median(lag_days), 1) AS lag_days_median,
           round(percentile_cont(0.9) WITHIN GROUP (ORDER BY lag_days), 1) AS lag_days_p90,
           exact_rate(sum(frozen), count(*)) AS share_in_frozen_periods,
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
       CASE WHEN (SELECT scope FROM access) IS NULL THEN coalesce(b.rows_rejected, 0) END AS rows_rejected,
       CASE WHEN (SELECT scope FROM access) IS NULL THEN coalesce(seq.seq_gaps, 0) END AS seq_gaps,
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
