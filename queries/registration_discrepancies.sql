-- name: registration_discrepancies
-- title_zh: 台账登记差异（漏登、应退未退）
-- title_en: Registration discrepancies: eligible not registered, registered not eligible
-- description: On as_of, compares the derived status with civil affairs' registrations (definition: docs/reports.md, registration_discrepancies). She is registered when her latest registration action effective on or before as_of is `registered`; of actions with the same effective date, the one whose current version was ingested later wins, then the higher record_id compared as text. eligible_not_registered (漏登): in the ledger by the status rule on as_of but not registered. registered_not_eligible (应退未退): registered but not in the ledger on as_of, including registrations of persons with no women record. Region = the village where she lived on as_of; only if she lived in no rural village that day (moved out or to a town, or no women record) does the village of her latest registration stand in.
-- publish: labels region_code
-- param: as_of date 2024-12-31 | Day of the comparison
-- param: level text county {province,city,county,township,village} | Region level of the rows
-- param: region text 45 | Code prefix of the regions shown
WITH latest AS (
    -- Her deciding action on as_of. Same effective date: the current version ingested later
    -- (rows of one batch share its instant), then the higher record_id as text; `source` last,
    -- only so that the order is total. One max per woman over a text that sorts in that
    -- order: the effective date (ISO), the ingestion instant (µs, 20 digits), record_id and
    -- source, joined by U+0001 (a record_id holds no control character, and U+0001 sorts
    -- below every character it can hold, so a shorter record_id sorts first as it should),
    -- then `action:village` (action codes have no colon). DataFusion's first_value with an
    -- ORDER BY accumulates row by row; a max over text does not.
    SELECT person_id,
           split_part(max(concat_ws(chr(1),
                                    CAST(effective_date AS VARCHAR),
                                    lpad(CAST(CAST(ingested_at AS BIGINT) AS VARCHAR), 20, '0'),
                                    record_id,
                                    source,
                                    concat(action, ':', coalesce(region_code, '')))),
                      chr(1), 5) AS decided
    FROM registrations
    WHERE effective_date <= $as_of AND person_id IS NOT NULL
    GROUP BY person_id
),
registered AS (
    SELECT person_id, nullif(split_part(decided, ':', 2), '') AS registered_village
    FROM latest WHERE split_part(decided, ':', 1) = 'registered'
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
compared AS (
    -- One pass over her registration, her ledger status and her village (each computed
    -- once): eligible but not registered needs a village she lives in; registered but not
    -- eligible counts where she lives, else where she is registered.
    SELECT coalesce(r.person_id, i.person_id) AS person_id,
           CASE WHEN r.person_id IS NULL THEN l.village ELSE coalesce(l.village, r.registered_village) END AS village,
           CASE WHEN r.person_id IS NULL THEN 1 ELSE 0 END AS eligible_not_registered,
           CASE WHEN i.person_id IS NULL THEN 1 ELSE 0 END AS registered_not_eligible
    FROM registered r
    FULL OUTER JOIN in_ledger i ON i.person_id = r.person_id
    LEFT JOIN lived l ON l.person_id = coalesce(r.person_id, i.person_id)
    WHERE (r.person_id IS NULL AND l.village IS NOT NULL) OR i.person_id IS NULL
),
counts AS (
    SELECT lv.region_code, c.person_id, c.eligible_not_registered, c.registered_not_eligible
    FROM compared c
    JOIN region_levels lv ON lv.code = c.village AND lv.level = $level
)
SELECT c.region_code, rg.name AS region_name,
       sum(c.eligible_not_registered) AS eligible_not_registered,
       sum(c.registered_not_eligible) AS registered_not_eligible,
       sum(c.eligible_not_registered * cell_key(c.person_id)) AS eligible_not_registered__ck,
       sum(c.registered_not_eligible * cell_key(c.person_id)) AS registered_not_eligible__ck
FROM counts c
JOIN regions rg ON rg.code = c.region_code
WHERE starts_with(c.region_code, $region)
GROUP BY c.region_code, rg.name
ORDER BY c.region_code
