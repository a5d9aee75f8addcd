-- PostgreSQL peer of queries/priority_gaps.sql. Changes: max(boolean) -> bool_or (PG has no max(boolean)); date arithmetic written with ::date.
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
           bool_or(CASE WHEN group_code = 'hardship' THEN true ELSE false END) AS hardship,
           bool_or(CASE WHEN group_code = 'disabled' THEN true ELSE false END) AS disabled,
           bool_or(CASE WHEN group_code = 'seriously_ill' THEN true ELSE false END) AS seriously_ill,
           bool_or(CASE WHEN group_code = 'registered_poor' THEN true ELSE false END) AS registered_poor
    FROM group_episodes
    WHERE valid_from <= $as_of AND (valid_until IS NULL OR valid_until > $as_of)
    GROUP BY person_id
),
relief AS (
    SELECT DISTINCT person_id FROM services
    WHERE measure = 'M1' AND service_date <= $as_of AND service_date > ($as_of - INTERVAL '1 year')::date
)
SELECT l.region_code, rg.name AS region_name, l.person_key,
       g.hardship, g.disabled, g.seriously_ill, g.registered_poor
FROM in_ledger l
JOIN grp g ON g.person_id = l.person_id
LEFT JOIN relief r ON r.person_id = l.person_id
JOIN regions rg ON rg.code = l.region_code
WHERE r.person_id IS NULL
ORDER BY l.region_code, l.person_key
