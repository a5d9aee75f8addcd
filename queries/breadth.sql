-- name: breadth
-- title_zh: 关爱服务广度
-- title_en: Breadth: measure areas reached per woman, year to date
-- description: Among women in the ledger at any time from 1 January of as_of's year up to and including as_of, the mean number of distinct measure areas (M1..M7) of services dated in that span inside one of their episodes (women with none count as 0). Region: where she lived on the last day in the span on which she was in the ledger. Rates are computed exactly (mean_measures_per_woman = measure_reaches / women) and rounded to 4 decimal places, halves away from zero. See docs/reports.md.
-- publish: labels region_code
-- publish: rate mean_measures_per_woman = measure_reaches / women
-- param: as_of date 2024-12-31 | Last day counted
-- param: level text county {province,city,county,township,village} | Region level of the rows
-- param: region text 45 | Code prefix of the regions shown
-- The period is [1 January of as_of's year, as_of + 1 day), written out where it is used
-- (constant after binding, so the scans prune by it; a one-row CTE joined in would not).
WITH last_run AS (
    -- Her region on her last run in the period (run starts are distinct per woman and
    -- level): one max per woman over an integer that sorts as (run_start, region_code), then
    -- the code read back from it: (days since 1970 + 1,000,000, positive for any date) times
    -- 10^12, plus the region code, or 0 for a run in no known region (codes are the reference
    -- table's: 12 digits, the first two a province's, 11..82, so a code never begins with 0
    -- and reads back as its own digits; 0 reads back as NULL, as first_value would give).
    -- DataFusion's first_value with an ORDER BY keeps its ordering values row by row; a max
    -- over integers does not (breadth at 1M women: see bench/peers/NOTES.md, session 15).
    SELECT r.person_id,
           CAST(nullif(max((CAST(CAST(r.run_start AS INT) AS BIGINT) + 1000000) * 1000000000000
                           + coalesce(CAST(r.region_code AS BIGINT), 0)) % 1000000000000, 0) AS VARCHAR) AS region_code
    FROM ledger_runs r
    WHERE r.level = $level AND r.run_start < CAST($as_of + INTERVAL '1 day' AS DATE)
      AND (r.run_end IS NULL OR r.run_end > CAST(date_trunc('year', $as_of) AS DATE))
    GROUP BY r.person_id
),
women AS (
    SELECT person_id, region_code FROM last_run WHERE starts_with(region_code, $region)
),
reached AS (
    -- The measure areas reached (services inside one of her episodes: `in_episode`, kept
    -- by the deriver), as bits (M1 = 1, …, M7 = 64) gathered per woman, then counted: one
    -- group per woman, not per woman and measure.
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
        WHERE s.in_episode
          AND s.service_date >= CAST(date_trunc('year', $as_of) AS DATE)
          AND s.service_date < CAST($as_of + INTERVAL '1 day' AS DATE)
        GROUP BY s.person_id
    ) AS m
)
SELECT w.region_code,
       rg.name AS region_name,
       count(*) AS women,
       sum(coalesce(r.measures, 0)) AS measure_reaches,
       exact_rate(sum(coalesce(r.measures, 0)), count(*)) AS mean_measures_per_woman,
       sum(cell_key(w.person_id)) AS women__ck,
       sum(CASE WHEN coalesce(r.measures, 0) > 0 THEN cell_key(w.person_id) ELSE 0 END) AS measure_reaches__ck
FROM women w
LEFT JOIN reached r ON r.person_id = w.person_id
JOIN regions rg ON rg.code = w.region_code
GROUP BY w.region_code, rg.name
ORDER BY w.region_code
