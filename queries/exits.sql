-- name: exits
-- title_zh: 退出台账人数
-- title_en: Exits from the ledger, by reason and month
-- description: Ledger runs ending in [from, to) (the end day is the first day out): spouse_returned, moved_out, divorced, spouse_died, died, or, below the whole province, her moving out of the region during an episode (transfer_out). Region is where she lived on the last day in. See docs/reports.md.
-- publish: labels region_code month reason=exit_reasons
-- param: from date 2024-01-01 | First day of the period
-- param: to date 2025-01-01 | Day after the last day of the period
-- param: level text county {province,city,county,township,village} | Region level of the rows
-- param: region text 45 | Code prefix of the regions shown
SELECT r.region_code,
       rg.name AS region_name,
       CAST(date_trunc('month', r.run_end) AS DATE) AS month,
       r.exit_reason AS reason,
       count(*) AS exits,
       sum(cell_key(r.person_id)) AS exits__ck
FROM ledger_runs r
JOIN regions rg ON rg.code = r.region_code
WHERE r.level = $level
  AND starts_with(r.region_code, $region)
  AND r.run_end >= $from
  AND r.run_end < $to
GROUP BY r.region_code, rg.name, CAST(date_trunc('month', r.run_end) AS DATE), r.exit_reason
ORDER BY r.region_code, month, reason
