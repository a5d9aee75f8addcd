-- PostgreSQL peer of queries/group_coverage.sql. Changes: DOUBLE -> double precision; exact_rate(n, d) (careledger's exact rate) written out in integer arithmetic as div(n * 20000 + d, 2 * d)::double precision / 10000.
-- param: from date 2024-01-01 | First day of the period
-- param: to date 2025-01-01 | Day after the last day of the period
-- param: level text county {province,city,county,township,village} | Region level of the rows
-- param: region text 45 | Code prefix of the regions shown
-- param: measure text M1 | Measure area (M1..M7)
WITH both_days AS (
    SELECT e.person_id, g.group_code,
           greatest(e.start_date, g.valid_from, $from) AS d_from,
           least(coalesce(e.end_date, $to), coalesce(g.valid_until, $to), $to) AS d_to
    FROM status_episodes e
    JOIN group_episodes g ON g.person_id = e.person_id
),
in_group AS (
    SELECT * FROM both_days WHERE d_from < d_to
),
last_run AS (
    SELECT person_id, region_code,
           row_number() OVER (PARTITION BY person_id ORDER BY run_start DESC) AS rn
    FROM ledger_runs
    WHERE level = $level AND run_start < $to AND (run_end IS NULL OR run_end > $from)
),
region_of AS (
    SELECT person_id, region_code FROM last_run WHERE rn = 1 AND starts_with(region_code, $region)
),
per_woman AS (
    -- One row per woman and group: served when a service of the measure is dated on a day
    -- she was in both the group and the ledger (one pass over in_group, no DISTINCT counts).
    SELECT i.person_id, i.group_code,
           max(CASE WHEN s.person_id IS NULL THEN 0 ELSE 1 END) AS served
    FROM in_group i
    LEFT JOIN services s
      ON s.person_id = i.person_id
     AND s.measure = $measure
     AND s.service_date >= i.d_from
     AND s.service_date < i.d_to
     -- Implied by the two lines above (d_from >= $from, d_to <= $to); said so that the
     -- scan of services skips the pages outside the period.
     AND s.service_date >= $from AND s.service_date < $to
     -- Implied too (the days are inside one of her episodes), and kept with the service by
     -- the deriver: only services inside an episode reach the join.
     AND s.in_episode
    GROUP BY i.person_id, i.group_code
)
SELECT r.region_code,
       rg.name AS region_name,
       w.group_code,
       count(*) AS women_in_group_and_ledger,
       sum(w.served) AS women_served,
       div(sum(w.served) * 20000 + count(*), 2 * count(*))::double precision / 10000 AS coverage
FROM per_woman w
JOIN region_of r ON r.person_id = w.person_id
JOIN regions rg ON rg.code = r.region_code
GROUP BY r.region_code, rg.name, w.group_code
ORDER BY r.region_code, w.group_code
