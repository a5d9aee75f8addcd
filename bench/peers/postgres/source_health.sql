-- PostgreSQL peer of queries/source_health.sql. Changes: to_unixtime(x) -> floor(extract(epoch ...)) as double (DataFusion's is whole seconds); careledger's local_date / local_day_start (days in Asia/Shanghai, its default zone) -> AT TIME ZONE 'Asia/Shanghai'; median -> percentile_cont(0.5); exact_rate(n, d) (careledger's exact rate) written out in integer arithmetic as div(n * 20000 + d, 2 * d)::double precision / 10000.
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
           (floor(extract(epoch FROM d.ingested_at)) - floor(extract(epoch FROM d.d::timestamp AT TIME ZONE 'Asia/Shanghai')))::double precision / 86400.0 AS lag_days,
           CASE WHEN (d.ingested_at AT TIME ZONE 'Asia/Shanghai')::date >= (date_trunc('month', d.d::timestamp) + INTERVAL '1 month' + INTERVAL '9 days')::date THEN 1 ELSE 0 END AS frozen,
           CASE WHEN p.person_id IS NULL THEN 1 ELSE 0 END AS orphan
    FROM dated d LEFT JOIN people p ON p.person_id = d.person_id
),
t AS (
    SELECT source,
           count(*) AS dated_rows,
           round(percentile_cont(0.5) WITHIN GROUP (ORDER BY lag_days)::numeric, 1) AS lag_days_median,
           round(percentile_cont(0.9) WITHIN GROUP (ORDER BY lag_days)::numeric, 1) AS lag_days_p90,
           div((sum(frozen)) * 20000 + (count(*)), 2 * (count(*)))::double precision / 10000 AS share_in_frozen_periods,
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
