-- name: coverage_by_measure
-- title_zh: 关爱服务覆盖率（按措施）
-- title_en: Coverage by measure area
-- description: C(m, P) = distinct women with at least one service of measure m dated in [from, to) inside one of their episodes, divided by distinct women in the ledger at any time in [from, to). Each woman counts in the region where she lived on the last day in the period on which she was in the ledger. See docs/reports.md.
-- publish: labels region_code measure=measures
-- publish: rate coverage = women_served / women_in_ledger
-- param: from date 2024-01-01 | First day of the period
-- param: to date 2025-01-01 | Day after the last day of the period
-- param: level text county {province,city,county,township,village} | Region level of the rows
-- param: region text 45 | Code prefix of the regions shown
-- param: measure text '' | One measure (M1..M7); empty for all seven
WITH last_run AS (
    -- Her region on her last run in the period (run starts are distinct per woman and
    -- level): an aggregate, not a window over all her runs.
    SELECT person_key, first_value(region_code ORDER BY run_start DESC) AS region_code
    FROM ledger_runs
    WHERE level = $level AND run_start < $to AND (run_end IS NULL OR run_end > $from)
    GROUP BY person_key
),
denominator AS (
    SELECT person_key, region_code FROM last_run WHERE starts_with(region_code, $region)
),
served AS (
    SELECT DISTINCT s.person_key, s.measure
    FROM services s
    JOIN status_episodes e
      ON e.person_key = s.person_key
     AND s.service_date >= e.start_date
     AND (e.end_date IS NULL OR s.service_date < e.end_date)
    WHERE s.service_date >= $from AND s.service_date < $to
),
measures AS (
    SELECT code AS measure, zh AS measure_zh FROM codes WHERE list = 'measures' AND ($measure = '' OR code = $measure)
)
SELECT d.region_code,
       rg.name AS region_name,
       m.measure,
       m.measure_zh,
       -- One denominator row per woman and measure, at most one served row joined to it:
       -- plain counts are the distinct counts.
       count(*) AS women_in_ledger,
       count(sv.person_key) AS women_served,
       round(CAST(count(sv.person_key) AS DOUBLE) / count(*), 4) AS coverage,
       sum(DISTINCT cell_key(d.person_key)) AS women_in_ledger__ck,
       sum(DISTINCT cell_key(sv.person_key)) AS women_served__ck
FROM denominator d
CROSS JOIN measures m
LEFT JOIN served sv ON sv.person_key = d.person_key AND sv.measure = m.measure
JOIN regions rg ON rg.code = d.region_code
GROUP BY d.region_code, rg.name, m.measure, m.measure_zh
ORDER BY d.region_code, m.measure
