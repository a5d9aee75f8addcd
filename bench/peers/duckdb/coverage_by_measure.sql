-- DuckDB peer of queries/coverage_by_measure.sql. Changes: exact_rate(n, d) (careledger's exact rate) written out in integer arithmetic as CAST((n * 20000 + d) // (2 * d) AS DOUBLE) / 10000; her last run by row_number() instead of careledger's first_value aggregate; otherwise the DataFusion SQL runs as is.
-- name: coverage_by_measure
-- title_zh: 关爱服务覆盖率（按措施）
-- title_en: Coverage by measure area
-- description: C(m, P) = distinct women with at least one service of measure m dated in [from, to) inside one of their episodes, divided by distinct women in the ledger at any time in [from, to). Each woman counts in the region where she lived on the last day in the period on which she was in the ledger.
-- param: from date 2024-01-01 | First day of the period
-- param: to date 2025-01-01 | Day after the last day of the period
-- param: level text county {province,city,county,township,village} | Region level of the rows
-- param: region text 45 | Code prefix of the regions shown
-- param: measure text '' | One measure (M1..M7); empty for all seven
WITH last_run AS (
    SELECT person_id, region_code,
           row_number() OVER (PARTITION BY person_id ORDER BY run_start DESC) AS rn
    FROM ledger_runs
    WHERE level = $level AND run_start < $to AND (run_end IS NULL OR run_end > $from)
),
denominator AS (
    SELECT person_id, region_code FROM last_run WHERE rn = 1 AND starts_with(region_code, $region)
),
served AS (
    -- The measure areas of each woman's services dated in the period inside one of her
    -- episodes, as bits (M1 = 1, M2 = 2, …, M7 = 64): one row per woman, not per woman and
    -- measure.
    SELECT s.person_id,
           bit_or(CASE s.measure
                       WHEN 'M1' THEN 1
                       WHEN 'M2' THEN 2
                       WHEN 'M3' THEN 4
                       WHEN 'M4' THEN 8
                       WHEN 'M5' THEN 16
                       WHEN 'M6' THEN 32
                       WHEN 'M7' THEN 64
                       ELSE 0 END) AS measures
    FROM services s
    WHERE s.in_episode AND s.service_date >= $from AND s.service_date < $to
    GROUP BY s.person_id
),
measures AS (
    SELECT code AS measure, zh AS measure_zh FROM codes WHERE list = 'measures' AND ($measure = '' OR code = $measure)
),
-- Per region: the women in the ledger and, for each measure, those of them served. Each
-- woman is one row (nothing is multiplied by the seven measures before it is counted).
per_region AS (
    SELECT d.region_code,
           count(*) AS women_in_ledger,
           sum(CASE WHEN sv.measures & 1 <> 0 THEN 1 ELSE 0 END) AS served_m1,
           sum(CASE WHEN sv.measures & 2 <> 0 THEN 1 ELSE 0 END) AS served_m2,
           sum(CASE WHEN sv.measures & 4 <> 0 THEN 1 ELSE 0 END) AS served_m3,
           sum(CASE WHEN sv.measures & 8 <> 0 THEN 1 ELSE 0 END) AS served_m4,
           sum(CASE WHEN sv.measures & 16 <> 0 THEN 1 ELSE 0 END) AS served_m5,
           sum(CASE WHEN sv.measures & 32 <> 0 THEN 1 ELSE 0 END) AS served_m6,
           sum(CASE WHEN sv.measures & 64 <> 0 THEN 1 ELSE 0 END) AS served_m7
    FROM denominator d
    LEFT JOIN served sv ON sv.person_id = d.person_id
    GROUP BY d.region_code
)
SELECT p.region_code,
       rg.name AS region_name,
       m.measure,
       m.measure_zh,
       p.women_in_ledger,
       CASE m.measure
           WHEN 'M1' THEN p.served_m1
           WHEN 'M2' THEN p.served_m2
           WHEN 'M3' THEN p.served_m3
           WHEN 'M4' THEN p.served_m4
           WHEN 'M5' THEN p.served_m5
           WHEN 'M6' THEN p.served_m6
           WHEN 'M7' THEN p.served_m7
       END AS women_served,
       CAST(((CASE m.measure
           WHEN 'M1' THEN p.served_m1
           WHEN 'M2' THEN p.served_m2
           WHEN 'M3' THEN p.served_m3
           WHEN 'M4' THEN p.served_m4
           WHEN 'M5' THEN p.served_m5
           WHEN 'M6' THEN p.served_m6
           WHEN 'M7' THEN p.served_m7
       END) * 20000 + p.women_in_ledger) // (2 * p.women_in_ledger) AS DOUBLE) / 10000 AS coverage
FROM per_region p
CROSS JOIN measures m
JOIN regions rg ON rg.code = p.region_code
ORDER BY p.region_code, m.measure
