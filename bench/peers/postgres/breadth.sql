-- PostgreSQL peer of queries/breadth.sql. Changes: date_trunc on date::timestamp (avoids the timestamptz overload); DOUBLE -> double precision; exact_rate(n, d) (careledger's exact rate) written out in integer arithmetic as div(n * 20000 + d, 2 * d)::double precision / 10000.
-- param: as_of date 2024-12-31 | Last day counted
-- param: level text county {province,city,county,township,village} | Region level of the rows
-- param: region text 45 | Code prefix of the regions shown
WITH span AS (
    SELECT date_trunc('year', CAST($as_of AS timestamp))::date AS d_from, ($as_of + 1) AS d_to
),
last_run AS (
    SELECT r.person_id, r.region_code,
           row_number() OVER (PARTITION BY r.person_id ORDER BY r.run_start DESC) AS rn
    FROM ledger_runs r CROSS JOIN span
    WHERE r.level = $level AND r.run_start < span.d_to AND (r.run_end IS NULL OR r.run_end > span.d_from)
),
women AS (
    SELECT person_id, region_code FROM last_run WHERE rn = 1 AND starts_with(region_code, $region)
),
reached AS (
    -- The measure areas reached, as bits (M1 = 1, …, M7 = 64) gathered per woman, then
    -- counted: one group per woman, not per woman and measure.
    SELECT person_id,
           CASE WHEN mask & 1 <> 0 THEN 1 ELSE 0 END +
           CASE WHEN mask & 2 <> 0 THEN 1 ELSE 0 END +
           CASE WHEN mask & 4 <> 0 THEN 1 ELSE 0 END +
           CASE WHEN mask & 8 <> 0 THEN 1 ELSE 0 END +
           CASE WHEN mask & 16 <> 0 THEN 1 ELSE 0 END +
           CASE WHEN mask & 32 <> 0 THEN 1 ELSE 0 END +
           CASE WHEN mask & 64 <> 0 THEN 1 ELSE 0 END AS measures
    FROM (
        SELECT s.person_id, bit_or(CASE s.measure
                       WHEN 'M1' THEN 1
                       WHEN 'M2' THEN 2
                       WHEN 'M3' THEN 4
                       WHEN 'M4' THEN 8
                       WHEN 'M5' THEN 16
                       WHEN 'M6' THEN 32
                       WHEN 'M7' THEN 64
                       ELSE 0 END) AS mask
        FROM services s
        CROSS JOIN span
        WHERE s.in_episode AND s.service_date >= span.d_from AND s.service_date < span.d_to
        GROUP BY s.person_id
    ) AS m
)
SELECT w.region_code,
       rg.name AS region_name,
       count(*) AS women,
       sum(coalesce(r.measures, 0)) AS measure_reaches,
       div((sum(coalesce(r.measures, 0))) * 20000 + (count(*)), 2 * (count(*)))::double precision / 10000 AS mean_measures_per_woman
FROM women w
LEFT JOIN reached r ON r.person_id = w.person_id
JOIN regions rg ON rg.code = w.region_code
GROUP BY w.region_code, rg.name
ORDER BY w.region_code
