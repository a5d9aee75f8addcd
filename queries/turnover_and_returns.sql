-- name: turnover_and_returns
-- title_zh: 流动周转率与返乡率
-- title_en: Migration turnover and return rate, per region and month
-- description: For each month starting in [from, to): stock on the eve of the month (the last day of the previous month), entries and exits in the month, exits because the husband came home (spouse_returned), turnover = (entries + exits) / stock_before, return rate = returns / stock_before (null when that stock is 0). Both rates are computed exactly and rounded to 4 decimal places, halves away from zero. See docs/reports.md.
-- publish: labels region_code month
-- publish: rate turnover = entries + exits / stock_before
-- publish: rate return_rate = returns / stock_before
-- param: from date 2024-01-01 | First month (its first day)
-- param: to date 2025-01-01 | Day after the last month
-- param: level text county {province,city,county,township,village} | Region level of the rows
-- param: region text 45 | Code prefix of the regions shown
WITH m AS (
    SELECT month_start, month_end FROM calendar_months WHERE month_start >= $from AND month_start < $to
),
r AS (
    SELECT region_code, run_start, run_end, exit_reason, cell_key(person_id) AS ck
    FROM ledger_runs WHERE level = $level AND starts_with(region_code, $region)
),
per AS (
    SELECT r.region_code, m.month_start,
           sum(CASE WHEN r.run_start < m.month_start AND (r.run_end IS NULL OR r.run_end >= m.month_start) THEN 1 ELSE 0 END) AS stock_before,
           sum(CASE WHEN r.run_start >= m.month_start AND r.run_start < m.month_end THEN 1 ELSE 0 END) AS entries,
           sum(CASE WHEN r.run_end >= m.month_start AND r.run_end < m.month_end THEN 1 ELSE 0 END) AS exits,
           sum(CASE WHEN r.run_end >= m.month_start AND r.run_end < m.month_end AND r.exit_reason = 'spouse_returned' THEN 1 ELSE 0 END) AS returns,
           sum(CASE WHEN r.run_start < m.month_start AND (r.run_end IS NULL OR r.run_end >= m.month_start) THEN r.ck ELSE 0 END) AS stock_before__ck,
           sum(CASE WHEN r.run_start >= m.month_start AND r.run_start < m.month_end THEN r.ck ELSE 0 END) AS entries__ck,
           sum(CASE WHEN r.run_end >= m.month_start AND r.run_end < m.month_end THEN r.ck ELSE 0 END) AS exits__ck,
           sum(CASE WHEN r.run_end >= m.month_start AND r.run_end < m.month_end AND r.exit_reason = 'spouse_returned' THEN r.ck ELSE 0 END) AS returns__ck
    FROM r CROSS JOIN m
    WHERE r.run_start < m.month_end AND (r.run_end IS NULL OR r.run_end >= m.month_start)
    GROUP BY r.region_code, m.month_start
)
SELECT per.region_code,
       rg.name AS region_name,
       per.month_start AS month,
       per.stock_before,
       per.entries,
       per.exits,
       per.returns,
       exact_rate(per.entries + per.exits, per.stock_before) AS turnover,
       exact_rate(per.returns, per.stock_before) AS return_rate,
       per.stock_before__ck, per.entries__ck, per.exits__ck, per.returns__ck
FROM per
JOIN regions rg ON rg.code = per.region_code
ORDER BY per.region_code, month
