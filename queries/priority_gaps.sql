-- name: priority_gaps
-- title_zh: 重点群体帮扶缺口（个案清单）
-- title_en: Priority gaps: case list for follow-up
-- description: Women in the ledger and in a priority group on as_of with no relief (M1) service dated in the 12 months up to as_of (as_of - 1 year < date <= as_of). One row per woman by person_key, with her groups; for follow-up by those allowed to see cases, never for publication. See docs/reports.md.
-- audience: analyst
-- param: as_of date 2024-12-31 | Day E
-- param: level text county {province,city,county,township,village} | Region level of the rows
-- param: region text 45 | Code prefix of the regions shown
WITH in_ledger AS (
    SELECT person_id, person_key, region_code FROM ledger_runs
    WHERE level = $level AND starts_with(region_code, $region)
      AND run_start <= $as_of AND (run_end IS NULL OR run_end > $as_of)
),
grp AS (
    SELECT person_id,
           bool_or(group_code = 'hardship') AS hardship,
           bool_or(group_code = 'disabled') AS disabled,
           bool_or(group_code = 'seriously_ill') AS seriously_ill,
           bool_or(group_code = 'registered_poor') AS registered_poor
    FROM group_episodes
    WHERE valid_from <= $as_of AND (valid_until IS NULL OR valid_until > $as_of)
    GROUP BY person_id
),
relief AS (
    SELECT DISTINCT person_id FROM services
    WHERE measure = 'M1' AND service_date <= $as_of AND service_date > CAST($as_of - INTERVAL '1 year' AS DATE)
)
SELECT l.region_code, rg.name AS region_name, l.person_key,
       g.hardship, g.disabled, g.seriously_ill, g.registered_poor
FROM in_ledger l
JOIN grp g ON g.person_id = l.person_id
LEFT JOIN relief r ON r.person_id = l.person_id
JOIN regions rg ON rg.code = l.region_code
WHERE r.person_id IS NULL
ORDER BY l.region_code, l.person_key
