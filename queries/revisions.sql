-- name: revisions
-- title_zh: 数据修订（冻结时点与当前对比）
-- title_en: Revisions: stock as known at a frozen instant vs now
-- description: Runs the stock report twice, as the warehouse knew things at frozen_at and as it knows them now, and shows both with the difference per region. Late reports, corrections and retractions that arrived after frozen_at make up the difference.
-- compose: stock
-- param: frozen_at timestamp 2025-01-10T00:00:00Z | The instant the published figure was frozen (known_at)
-- param: as_of date 2024-12-31 | Day E of the stock
-- param: level text county {province,city,county,township,village} | Region level of the rows
-- param: region text 45 | Code prefix of the regions shown
SELECT coalesce(c.region_code, f.region_code) AS region_code,
       coalesce(c.region_name, f.region_name) AS region_name,
       coalesce(f.women, 0) AS women_frozen,
       coalesce(c.women, 0) AS women_now,
       coalesce(c.women, 0) - coalesce(f.women, 0) AS revision
FROM current c
FULL OUTER JOIN frozen f ON f.region_code = c.region_code
ORDER BY region_code
