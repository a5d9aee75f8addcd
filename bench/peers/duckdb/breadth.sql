-- DuckDB peer of queries/breadth.sql. Changes: exact_rate(n, d) (careledger's exact rate) written out in integer arithmetic as CAST((n * 20000 + d) // (2 * d) AS DOUBLE) / 10000; otherwise the DataFusion SQL runs as is.
-- name: breadth
-- title_zh: 关爱服务广度
-- title_en: Breadth: measure areas reached per woman, year to date
-- description: Among women in the ledger at any time from 1 January of as_of's year up to and including as_of, the mean number of distinct measure areas (M1..M7) of services dated in that span inside one of their episodes (women with none count as 0). Region: where she lived on the last day in the span on which she was in the ledger.
-- param: as_of date 2024-12-31 | Last day counted
-- param: level text county {province,city,county,township,village} | Region level of the rows
-- param: region text 45 | Code prefix of the regions shown
WITH span AS (
    SELECT CAST(date_trunc('year', $as_of) AS DATE) AS d_from, CAST($as_of + INTERVAL '1 day' AS DATE) AS d_to
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
       CAST(((sum(coalesce(r.measures, 0))) * 20000 + (count(*))) // (2 * (count(*))) AS DOUBLE) / 10000 AS mean_measures_per_woman
FROM women w
LEFT JOIN reached r ON r.person_id = w.person_id
JOIN regions rg ON rg.code = w.region_code
GROUP BY w.region_code, rg.name
ORDER BY w.region_code
