-- DuckDB peer of queries/registration_discrepancies.sql. Changes: the `__ck` cell-key columns (careledger publication only) left out; otherwise the DataFusion SQL runs as is.
-- name: registration_discrepancies
-- title_zh: 台账登记差异（漏登、应退未退）
-- title_en: Registration discrepancies: eligible not registered, registered not eligible
-- param: as_of date 2024-12-31 | Day of the comparison
-- param: level text county {province,city,county,township,village} | Region level of the rows
-- param: region text 45 | Code prefix of the regions shown
WITH latest AS (
    -- Her deciding action on as_of. Same effective date: the current version ingested later
    -- (rows of one batch share its instant), then the higher record_id as text; `source` last,
    -- only so that the order is total.
    SELECT person_id, action, region_code,
           row_number() OVER (
               PARTITION BY person_id
               ORDER BY effective_date DESC, ingested_at DESC, record_id DESC, source DESC
           ) AS rn
    FROM registrations
    WHERE effective_date <= $as_of AND person_id IS NOT NULL
),
registered AS (
    SELECT person_id, region_code AS registered_village FROM latest WHERE rn = 1 AND action = 'registered'
),
in_ledger AS (
    -- In the ledger on as_of, wherever she lived (episodes are not split by region).
    SELECT DISTINCT person_id FROM status_episodes
    WHERE start_date <= $as_of AND (end_date IS NULL OR end_date > $as_of)
),
lived AS (
    -- The rural village she lived in on as_of; no row if she lived in none (moved out, a
    -- town's residents' committee, no women record).
    SELECT r.person_id, r.region_code AS village
    FROM residence r
    JOIN regions g ON g.code = r.region_code AND g.level = 'village' AND g.rural
    WHERE r.valid_from <= $as_of AND (r.valid_to IS NULL OR r.valid_to > $as_of)
),
missing AS (
    SELECT l.village, i.person_id FROM in_ledger i
    JOIN lived l ON l.person_id = i.person_id
    LEFT JOIN registered r ON r.person_id = i.person_id
    WHERE r.person_id IS NULL
),
stale AS (
    SELECT coalesce(l.village, r.registered_village) AS village, r.person_id FROM registered r
    LEFT JOIN in_ledger i ON i.person_id = r.person_id
    LEFT JOIN lived l ON l.person_id = r.person_id
    WHERE i.person_id IS NULL
),
counts AS (
    SELECT lv.region_code, c.person_id, c.eligible_not_registered, c.registered_not_eligible
    FROM (
        SELECT village, person_id, 1 AS eligible_not_registered, 0 AS registered_not_eligible FROM missing
        UNION ALL
        SELECT village, person_id, 0, 1 FROM stale
    ) c
    JOIN region_levels lv ON lv.code = c.village AND lv.level = $level
)
SELECT c.region_code, rg.name AS region_name,
       sum(c.eligible_not_registered) AS eligible_not_registered,
       sum(c.registered_not_eligible) AS registered_not_eligible
FROM counts c
JOIN regions rg ON rg.code = c.region_code
WHERE starts_with(c.region_code, $region)
GROUP BY c.region_code, rg.name
ORDER BY c.region_code
