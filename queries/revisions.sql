-- name: revisions
-- title_zh: 数据修订（冻结时点与较晚时点对比）
-- title_en: Revisions: stock and coverage as known at a frozen instant vs a later one
-- description: Runs the stock report (on as_of) and the coverage report (measure over [from, to)) twice: as the warehouse knew things at frozen_at, and as it knew them at known_at (default now); shows both and the difference per region. Late reports, corrections and retractions that arrived between the two instants make up the difference. Both instants are parameters, so a revisions table can itself be reproduced later. Rates are computed exactly (coverage_frozen = served_frozen / in_ledger_frozen and coverage_now = served_now / in_ledger_now) and rounded to 4 decimal places, halves away from zero. See docs/reports.md.
-- compose: stock coverage_by_measure
-- publish: labels region_code
-- publish: rate coverage_frozen = served_frozen / in_ledger_frozen
-- publish: rate coverage_now = served_now / in_ledger_now
-- param: frozen_at timestamp 2025-01-10T00:00:00Z | The earlier instant (the published figure's known_at)
-- param: as_of date 2024-12-31 | Day E of the stock
-- param: from date 2024-01-01 | First day of the coverage period
-- param: to date 2025-01-01 | Day after the last day of the coverage period
-- param: measure text M1 {M1,M2,M3,M4,M5,M6,M7} | Measure area of the coverage
-- param: level text county {province,city,county,township,village} | Region level of the rows
-- param: region text 45 | Code prefix of the regions shown
WITH seen AS (
    SELECT region_code, region_name FROM frozen_stock
    UNION SELECT region_code, region_name FROM current_stock
    UNION SELECT region_code, region_name FROM frozen_coverage_by_measure
    UNION SELECT region_code, region_name FROM current_coverage_by_measure
)
SELECT r.region_code,
       r.region_name,
       coalesce(fs.women, 0) AS women_frozen,
       coalesce(cs.women, 0) AS women_now,
       coalesce(cs.women, 0) - coalesce(fs.women, 0) AS stock_revision,
       coalesce(fc.women_in_ledger, 0) AS in_ledger_frozen,
       coalesce(fc.women_served, 0) AS served_frozen,
       fc.coverage AS coverage_frozen,
       coalesce(cc.women_in_ledger, 0) AS in_ledger_now,
       coalesce(cc.women_served, 0) AS served_now,
       cc.coverage AS coverage_now,
       coalesce(fs.women__ck, 0) AS women_frozen__ck,
       coalesce(cs.women__ck, 0) AS women_now__ck,
       coalesce(cs.women__ck, 0) - coalesce(fs.women__ck, 0) AS stock_revision__ck,
       coalesce(fc.women_in_ledger__ck, 0) AS in_ledger_frozen__ck,
       coalesce(fc.women_served__ck, 0) AS served_frozen__ck,
       coalesce(cc.women_in_ledger__ck, 0) AS in_ledger_now__ck,
       coalesce(cc.women_served__ck, 0) AS served_now__ck
FROM seen r
LEFT JOIN frozen_stock fs ON fs.region_code = r.region_code
LEFT JOIN current_stock cs ON cs.region_code = r.region_code
LEFT JOIN frozen_coverage_by_measure fc ON fc.region_code = r.region_code
LEFT JOIN current_coverage_by_measure cc ON cc.region_code = r.region_code
ORDER BY r.region_code
