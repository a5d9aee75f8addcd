-- PostgreSQL peer of queries/entries.sql. Changes: date_trunc on run_start::timestamp (avoids the timestamptz overload), ::date back.
-- param: from date 2024-01-01 | First day of the period
-- param: to date 2025-01-01 | Day after the last day of the period
-- param: level text county {province,city,county,township,village} | Region level of the rows
-- param: region text 45 | Code prefix of the regions shown
SELECT r.region_code,
       rg.name AS region_name,
       date_trunc('month', r.run_start::timestamp)::date AS month,
       r.entry_reason AS reason,
       count(*) AS entries
FROM ledger_runs r
JOIN regions rg ON rg.code = r.region_code
WHERE r.level = $level
  AND starts_with(r.region_code, $region)
  AND r.run_start >= $from
  AND r.run_start < $to
GROUP BY r.region_code, rg.name, date_trunc('month', r.run_start::timestamp)::date, r.entry_reason
ORDER BY r.region_code, month, reason
