-- PostgreSQL peer of queries/breadth.sql. Changes: date_trunc on date::timestamp (avoids the timestamptz overload); DOUBLE -> double precision; round(x, 4) via numeric.
-- param: as_of date 2024-12-31 | Last day counted
-- param: level text county {province,city,county,township,village} | Region level of the rows
-- param: region text 45 | Code prefix of the regions shown
WITH span AS (
    SELECT date_trunc('year', CAST($as_of AS timestamp))::date AS d_from, ($as_of + 1) AS d_to
),
last_run AS (
    SELECT r.person_key, r.region_code,
           row_number() OVER (PARTITION BY r.person_key ORDER BY r.run_start DESC) AS rn
    FROM ledger_runs r CROSS JOIN span
    WHERE r.level = $level AND r.run_start < span.d_to AND (r.run_end IS NULL OR r.run_end > span.d_from)
),
women AS (
    SELECT person_key, region_code FROM last_run WHERE rn = 1 AND starts_with(region_code, $region)
),
reached AS (
    SELECT s.person_key, count(DISTINCT s.measure) AS measures
    FROM services s
    CROSS JOIN span
    JOIN status_episodes e
      ON e.person_key = s.person_key
     AND s.service_date >= e.start_date
     AND (e.end_date IS NULL OR s.service_date < e.end_date)
    WHERE s.service_date >= span.d_from AND s.service_date < span.d_to
    GROUP BY s.person_key
)
SELECT w.region_code,
       rg.name AS region_name,
       count(*) AS women,
       sum(coalesce(r.measures, 0)) AS measure_reaches,
       round((sum(coalesce(r.measures, 0))::double precision / count(*))::numeric, 4) AS mean_measures_per_woman
FROM women w
LEFT JOIN reached r ON r.person_key = w.person_key
JOIN regions rg ON rg.code = w.region_code
GROUP BY w.region_code, rg.name
ORDER BY w.region_code
