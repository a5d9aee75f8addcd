-- name: entries
-- title_zh: 新增纳入台账人数
-- title_en: Entries into the ledger, by reason and month
-- description: Ledger runs starting in [from, to): a woman's episode starting (absence_6_months, moved_in, married), or, below the whole province, her moving into the region during an episode (transfer_in). Region is where she lived on the first day. See docs/reports.md.
-- publish: labels region_code month reason=entry_reasons
-- param: from date 2024-01-01 | First day of the period
-- param: to date 2025-01-01 | Day after the last day of the period
-- param: level text county {province,city,county,township,village} | Region level of the rows
-- param: region text 45 | Code prefix of the regions shown
SELECT r.region_code,
       rg.name AS region_name,
       CAST(date_trunc('month', r.run_start) AS DATE) AS month,
       r.entry_reason AS reason,
       count(*) AS entries,
       sum(cell_key(r.person_id)) AS entries__ck
FROM ledger_runs r
JOIN regions rg ON rg.code = r.region_code
WHERE r.level = $level
  AND starts_with(r.region_code, $region)
  AND r.run_start >= $from
  AND r.run_start < $to
GROUP BY r.region_code, rg.name, CAST(date_trunc('month', r.run_start) AS DATE), r.entry_reason
ORDER BY r.region_code, month, reason
