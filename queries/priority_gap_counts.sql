-- name: priority_gap_counts
-- title_zh: 重点群体帮扶缺口（统计）
-- title_en: Priority gaps: counts for publication
-- description: Per region and priority group, women in the ledger and in the group on as_of, and those among them with no relief (M1) service in the 12 months up to as_of. Groups overlap: never add them up. See docs/reports.md.
-- publish: labels region_code group_code=priority_groups
-- param: as_of date 2024-12-31 | Day E
-- param: level text county {province,city,county,township,village} | Region level of the rows
-- param: region text 45 | Code prefix of the regions shown
WITH in_ledger AS (
    SELECT person_id, region_code FROM ledger_runs
    WHERE level = $level AND starts_with(region_code, $region)
      AND run_start <= $as_of AND (run_end IS NULL OR run_end > $as_of)
),
grp AS (
    SELECT DISTINCT person_id, group_code FROM group_episodes
    WHERE valid_from <= $as_of AND (valid_until IS NULL OR valid_until > $as_of)
),
relief AS (
    SELECT DISTINCT person_id FROM services
    WHERE measure = 'M1' AND service_date <= $as_of AND service_date > CAST($as_of - INTERVAL '1 year' AS DATE)
)
SELECT l.region_code, rg.name AS region_name, g.group_code,
       count(*) AS women_in_group,
       sum(CASE WHEN r.person_id IS NULL THEN 1 ELSE 0 END) AS without_relief_12_months,
       sum(cell_key(l.person_id)) AS women_in_group__ck,
       sum(CASE WHEN r.person_id IS NULL THEN cell_key(l.person_id) ELSE 0 END) AS without_relief_12_months__ck
FROM in_ledger l
JOIN grp g ON g.person_id = l.person_id
LEFT JOIN relief r ON r.person_id = l.person_id
JOIN regions rg ON rg.code = l.region_code
GROUP BY l.region_code, rg.name, g.group_code
ORDER BY l.region_code, g.group_code
