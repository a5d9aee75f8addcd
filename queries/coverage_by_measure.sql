-- name: coverage_by_measure
-- title_zh: 关爱服务覆盖率（按措施）
-- title_en: Coverage by measure area
-- description: C(m, P) = distinct women with at least one service of measure m dated in [from, to) inside one of their episodes, divided by distinct women in the ledger at any time in [from, to). Each woman counts in the region where she lived on the last day in the period on which she was in the ledger. Rates are computed exactly (coverage = women_served / women_in_ledger) and rounded to 4 decimal places, halves away from zero. See docs/reports.md.
-- publish: labels region_code measure=measures
-- publish: rate coverage = women_served / women_in_ledger
-- param: from date 2024-01-01 | First day of the period
-- param: to date 2025-01-01 | Day after the last day of the period
-- param: level text county {province,city,county,township,village} | Region level of the rows
-- param: region text 45 | Code prefix of the regions shown
-- param: measure text '' | One measure (M1..M7); empty for all seven
WITH last_run AS (
    -- Her region on her last run in the period (run starts are distinct per woman and
    -- level): one max per woman over an integer that sorts as (run_start, region_code), then
    -- the code read back from it: (days since 1970 + 1,000,000, positive for any date) times
    -- 10^12, plus the region code, or 0 for a run in no known region (codes are the reference
    -- table's: 12 digits, the first two a province's, 11..82, so a code never begins with 0
    -- and reads back as its own digits; 0 reads back as NULL, as first_value would give).
    -- DataFusion's first_value with an ORDER BY keeps its ordering values row by row; a max
    -- over integers does not (breadth at 1M women: see bench/peers/NOTES.md, session 15).
    SELECT person_id,
           CAST(nullif(max((CAST(CAST(run_start AS INT) AS BIGINT) + 1000000) * 1000000000000
                           + coalesce(CAST(region_code AS BIGINT), 0)) % 1000000000000, 0) AS VARCHAR) AS region_code
    FROM ledger_runs
    WHERE level = $level AND run_start < $to AND (run_end IS NULL OR run_end > $from)
    GROUP BY person_id
),
denominator AS (
    SELECT person_id, region_code FROM last_run WHERE starts_with(region_code, $region)
),
served AS (
    -- The measure areas of each woman's services dated in the period inside one of her
    -- episodes (`in_episode`, kept by the deriver), as bits (M1 = 1, M2 = 2, …, M7 = 64): one
    -- row per woman, not per woman and measure.
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
           sum(cell_key(d.person_id)) AS women_in_ledger__ck,
           sum(CASE WHEN sv.measures & 1 <> 0 THEN 1 ELSE 0 END) AS served_m1,
           sum(CASE WHEN sv.measures & 1 <> 0 THEN cell_key(d.person_id) END) AS served_m1__ck,
           sum(CASE WHEN sv.measures & 2 <> 0 THEN 1 ELSE 0 END) AS served_m2,
           sum(CASE WHEN sv.measures & 2 <> 0 THEN cell_key(d.person_id) END) AS served_m2__ck,
           sum(CASE WHEN sv.measures & 4 <> 0 THEN 1 ELSE 0 END) AS served_m3,
           sum(CASE WHEN sv.measures & 4 <> 0 THEN cell_key(d.person_id) END) AS served_m3__ck,
           sum(CASE WHEN sv.measures & 8 <> 0 THEN 1 ELSE 0 END) AS served_m4,
           sum(CASE WHEN sv.measures & 8 <> 0 THEN cell_key(d.person_id) END) AS served_m4__ck,
           sum(CASE WHEN sv.measures & 16 <> 0 THEN 1 ELSE 0 END) AS served_m5,
           sum(CASE WHEN sv.measures & 16 <> 0 THEN cell_key(d.person_id) END) AS served_m5__ck,
           sum(CASE WHEN sv.measures & 32 <> 0 THEN 1 ELSE 0 END) AS served_m6,
           sum(CASE WHEN sv.measures & 32 <> 0 THEN cell_key(d.person_id) END) AS served_m6__ck,
           sum(CASE WHEN sv.measures & 64 <> 0 THEN 1 ELSE 0 END) AS served_m7,
           sum(CASE WHEN sv.measures & 64 <> 0 THEN cell_key(d.person_id) END) AS served_m7__ck
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
       exact_rate(CASE m.measure
           WHEN 'M1' THEN p.served_m1
           WHEN 'M2' THEN p.served_m2
           WHEN 'M3' THEN p.served_m3
           WHEN 'M4' THEN p.served_m4
           WHEN 'M5' THEN p.served_m5
           WHEN 'M6' THEN p.served_m6
           WHEN 'M7' THEN p.served_m7
       END, p.women_in_ledger) AS coverage,
       p.women_in_ledger__ck,
       CASE m.measure
           WHEN 'M1' THEN p.served_m1__ck
           WHEN 'M2' THEN p.served_m2__ck
           WHEN 'M3' THEN p.served_m3__ck
           WHEN 'M4' THEN p.served_m4__ck
           WHEN 'M5' THEN p.served_m5__ck
           WHEN 'M6' THEN p.served_m6__ck
           WHEN 'M7' THEN p.served_m7__ck
       END AS women_served__ck
FROM per_region p
CROSS JOIN measures m
JOIN regions rg ON rg.code = p.region_code
ORDER BY p.region_code, m.measure
