-- name: balance
-- title_zh: 台账增减平衡核对
-- title_en: Balance: stock change equals entries minus exits
-- description: Per region, Stock(to - 1) - Stock(from - 1) = Entries - Exits over [from, to), moves across the region's border counted as entries and exits there. `balanced` is false only if the warehouse has a bug. See docs/reports.md.
-- publish: labels region_code
-- param: from date 2024-01-01 | First day of the period
-- param: to date 2025-01-01 | Day after the last day of the period
-- param: level text county {province,city,county,township,village} | Region level of the rows
-- param: region text 45 | Code prefix of the regions shown
WITH r AS (
    SELECT *, cell_key(person_id) AS ck FROM ledger_runs WHERE level = $level AND starts_with(region_code, $region)
),
per_region AS (
    SELECT region_code,
           sum(CASE WHEN run_start < $from AND (run_end IS NULL OR run_end >= $from) THEN 1 ELSE 0 END) AS stock_before,
           sum(CASE WHEN run_start < $to AND (run_end IS NULL OR run_end >= $to) THEN 1 ELSE 0 END) AS stock_at_end,
           sum(CASE WHEN run_start >= $from AND run_start < $to THEN 1 ELSE 0 END) AS entries,
           sum(CASE WHEN run_end >= $from AND run_end < $to THEN 1 ELSE 0 END) AS exits,
           sum(CASE WHEN run_start < $from AND (run_end IS NULL OR run_end >= $from) THEN ck ELSE 0 END) AS stock_before__ck,
           sum(CASE WHEN run_start < $to AND (run_end IS NULL OR run_end >= $to) THEN ck ELSE 0 END) AS stock_at_end__ck,
           sum(CASE WHEN run_start >= $from AND run_start < $to THEN ck ELSE 0 END) AS entries__ck,
           sum(CASE WHEN run_end >= $from AND run_end < $to THEN ck ELSE 0 END) AS exits__ck
    FROM r
    GROUP BY region_code
)
SELECT p.region_code,
       rg.name AS region_name,
       p.stock_before,
       p.stock_at_end,
       p.entries,
       p.exits,
       p.stock_at_end - p.stock_before = p.entries - p.exits AS balanced,
       p.stock_before__ck, p.stock_at_end__ck, p.entries__ck, p.exits__ck
FROM per_region p
JOIN regions rg ON rg.code = p.region_code
ORDER BY p.region_code
