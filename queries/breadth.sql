-- name: breadth
-- title_zh: 关爱服务广度
-- title_en: Breadth: measure areas reached per woman, year to date
-- description: Among women in the ledger at any time from 1 January of as_of's year up to and including as_of, the mean number of distinct measure areas (M1..M7) of services dated in that span inside one of their episodes (women with none count as 0). Region: where she lived on the last day in the span on which she was in the ledger. See docs/reports.md.
-- publish: labels region_code
-- publish: rate mean_measures_per_woman = measure_reaches / women
-- param: as_of date 2024-12-31 | Last day counted
-- param: level text county {province,city,county,township,village} | Region level of the rows
-- param: region text 45 | Code prefix of the regions shown
-- The period is [1 January of as_of's year, as_of + 1 day), written out where it is used
-- (constant after binding, so the scans prune by it; a one-row CTE joined in would not).
WITH last_run AS (
    -- Her region on her last run in the period (run starts are distinct per woman and
    -- level): an aggregate, not a window over all her runs.
    SELECT r.person_key, first_value(r.region_code ORDER BY r.run_start DESC) AS region_code
    FROM ledger_runs r
    WHERE r.level = $level AND r.run_start < CAST($as_of + INTERVAL '1 day' AS DATE)
      AND (r.run_end IS NULL OR r.run_end > CAST(date_trunc('year', $as_of) AS DATE))
    GROUP BY r.person_key
),
women AS (
    SELECT person_key, region_code FROM last_run WHERE starts_with(region_code, $region)
),
reached AS (
    SELECT s.person_key, count(DISTINCT s.measure) AS measures
    FROM services s
    JOIN status_episodes e
      ON e.person_key = s.person_key
     AND s.service_date >= e.start_date
     AND (e.end_date IS NULL OR s.service_date < e.end_date)
    WHERE s.service_date >= CAST(date_trunc('year', $as_of) AS DATE)
      AND s.service_date < CAST($as_of + INTERVAL '1 day' AS DATE)
    GROUP BY s.person_key
)
SELECT w.region_code,
       rg.name AS region_name,
       count(*) AS women,
       sum(coalesce(r.measures, 0)) AS measure_reaches,
       round(CAST(sum(coalesce(r.measures, 0)) AS DOUBLE) / count(*), 4) AS mean_measures_per_woman,
       sum(cell_key(w.person_key)) AS women__ck,
       sum(CASE WHEN coalesce(r.measures, 0) > 0 THEN cell_key(w.person_key) ELSE 0 END) AS measure_reaches__ck
FROM women w
LEFT JOIN reached r ON r.person_key = w.person_key
JOIN regions rg ON rg.code = w.region_code
GROUP BY w.region_code, rg.name
ORDER BY w.region_code
