-- name: group_coverage
-- title_zh: 重点群体关爱服务覆盖率
-- title_en: Coverage by measure within each priority group
-- description: For each priority group: women who were in the group and in the ledger on the same day at some time in [from, to); served = those with a service of measure m dated on such a day. Region as in coverage_by_measure. Groups overlap: a woman counts in each of her groups, so never add groups up. Rates are computed exactly (coverage = women_served / women_in_group_and_ledger) and rounded to 4 decimal places, halves away from zero. See docs/reports.md.
-- publish: labels region_code group_code=priority_groups
-- publish: rate coverage = women_served / women_in_group_and_ledger
-- param: from date 2024-01-01 | First day of the period
-- param: to date 2025-01-01 | Day after the last day of the period
-- param: level text county {province,city,county,township,village} | Region level of the rows
-- param: region text 45 | Code prefix of the regions shown
-- param: measure text M1 | Measure area (M1..M7)
WITH both_days AS (
    SELECT e.person_id, g.group_code,
           greatest(e.start_date, g.valid_from, $from) AS d_from,
           least(coalesce(e.end_date, $to), coalesce(g.valid_until, $to), $to) AS d_to
    FROM status_episodes e
    JOIN group_episodes g ON g.person_id = e.person_id
),
in_group AS (
    SELECT * FROM both_days WHERE d_from < d_to
),
last_run AS (
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
region_of AS (
    SELECT person_id, region_code FROM last_run WHERE starts_with(region_code, $region)
),
per_woman AS (
    -- One row per woman and group: served when a service of the measure is dated on a day
    -- she was in both the group and the ledger (one pass over in_group, no DISTINCT counts).
    SELECT i.person_id, i.group_code,
           max(CASE WHEN s.person_id IS NULL THEN 0 ELSE 1 END) AS served
    FROM in_group i
    LEFT JOIN services s
      ON s.person_id = i.person_id
     AND s.measure = $measure
     AND s.service_date >= i.d_from
     AND s.service_date < i.d_to
     -- Implied by the two lines above (d_from >= $from, d_to <= $to); said so that the
     -- scan of services skips the pages outside the period.
     AND s.service_date >= $from AND s.service_date < $to
     -- Implied too (the days are inside one of her episodes), and kept with the service by
     -- the deriver: only services inside an episode reach the join.
     AND s.in_episode
    GROUP BY i.person_id, i.group_code
)
SELECT r.region_code,
       rg.name AS region_name,
       w.group_code,
       count(*) AS women_in_group_and_ledger,
       sum(w.served) AS women_served,
       exact_rate(sum(w.served), count(*)) AS coverage,
       sum(cell_key(w.person_id)) AS women_in_group_and_ledger__ck,
       sum(CASE WHEN w.served = 1 THEN cell_key(w.person_id) END) AS women_served__ck
FROM per_woman w
JOIN region_of r ON r.person_id = w.person_id
JOIN regions rg ON rg.code = r.region_code
GROUP BY r.region_code, rg.name, w.group_code
ORDER BY r.region_code, w.group_code
