-- PostgreSQL peer of queries/registration_discrepancies.sql. Changes: none (runs as is).
-- param: as_of date 2024-12-31 | Day of the comparison
-- param: level text county {province,city,county,township,village} | Region level of the rows
-- param: region text 45 | Code prefix of the regions shown
WITH latest AS (
    SELECT person_key, action, region_code,
           row_number() OVER (PARTITION BY person_key ORDER BY effective_date DESC, ingested_at DESC, record_id DESC) AS rn
    FROM registrations
    WHERE effective_date <= $as_of AND person_key IS NOT NULL
),
registered AS (
    SELECT person_key, region_code FROM latest WHERE rn = 1 AND action = 'registered'
),
eligible AS (
    SELECT person_key, region_code FROM ledger_runs
    WHERE level = $level AND run_start <= $as_of AND (run_end IS NULL OR run_end > $as_of)
),
missing AS (
    SELECT e.region_code FROM eligible e LEFT JOIN registered r ON r.person_key = e.person_key
    WHERE r.person_key IS NULL
),
stale AS (
    SELECT lv.region_code FROM registered r
    JOIN region_levels lv ON lv.code = r.region_code AND lv.level = $level
    LEFT JOIN eligible e ON e.person_key = r.person_key
    WHERE e.person_key IS NULL
),
counts AS (
    SELECT region_code, 1 AS eligible_not_registered, 0 AS registered_not_eligible FROM missing
    UNION ALL
    SELECT region_code, 0, 1 FROM stale
)
SELECT c.region_code, rg.name AS region_name,
       sum(c.eligible_not_registered) AS eligible_not_registered,
       sum(c.registered_not_eligible) AS registered_not_eligible
FROM counts c
JOIN regions rg ON rg.code = c.region_code
WHERE starts_with(c.region_code, $region)
GROUP BY c.region_code, rg.name
ORDER BY c.region_code
