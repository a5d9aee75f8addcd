-- name: stock
-- title_zh: 台账在册人数（存量）
-- title_en: Stock: women in the ledger on a day
-- description: Distinct women with a status episode where start <= as_of < end, by the region where each lived on as_of (rolled up to the chosen level), with age bands on as_of, ethnicity, and priority groups held on as_of. Priority groups overlap: never add them up. See docs/reports.md.
-- publish: labels region_code
-- param: as_of date 2024-12-31 | Day E of the count
-- param: level text county {province,city,county,township,village} | Region level of the rows
-- param: region text 45 | Code prefix of the regions shown (45 = all of Guangxi)
WITH s AS (
    SELECT r.region_code, r.person_id
    FROM ledger_runs r
    WHERE r.level = $level
      AND starts_with(r.region_code, $region)
      AND r.run_start <= $as_of
      AND (r.run_end IS NULL OR r.run_end > $as_of)
),
g AS (
    SELECT person_id,
           max(CASE WHEN group_code = 'hardship' THEN 1 ELSE 0 END) AS hardship,
           max(CASE WHEN group_code = 'disabled' THEN 1 ELSE 0 END) AS disabled,
           max(CASE WHEN group_code = 'seriously_ill' THEN 1 ELSE 0 END) AS seriously_ill,
           max(CASE WHEN group_code = 'registered_poor' THEN 1 ELSE 0 END) AS registered_poor
    FROM group_episodes
    WHERE valid_from <= $as_of AND (valid_until IS NULL OR valid_until > $as_of)
    GROUP BY person_id
),
p AS (
    SELECT s.region_code, s.person_id, cell_key(s.person_id) AS ck, pe.ethnicity,
           CAST(date_part('year', $as_of) - date_part('year', pe.birth_date) AS BIGINT)
             - CASE WHEN date_part('month', $as_of) * 100 + date_part('day', $as_of)
                         < date_part('month', pe.birth_date) * 100 + date_part('day', pe.birth_date)
                    THEN 1 ELSE 0 END AS age,
           coalesce(g.hardship, 0) AS hardship, coalesce(g.disabled, 0) AS disabled,
           coalesce(g.seriously_ill, 0) AS seriously_ill, coalesce(g.registered_poor, 0) AS registered_poor
    FROM s
    JOIN people pe ON pe.person_id = s.person_id
    LEFT JOIN g ON g.person_id = s.person_id
)
SELECT p.region_code,
       rg.name AS region_name,
       count(*) AS women,
       sum(ck) AS women__ck,
       sum(CASE WHEN age < 30 THEN 1 ELSE 0 END) AS age_under_30,
       sum(CASE WHEN age < 30 THEN ck ELSE 0 END) AS age_under_30__ck,
       sum(CASE WHEN age >= 30 AND age < 45 THEN 1 ELSE 0 END) AS age_30_44,
       sum(CASE WHEN age >= 30 AND age < 45 THEN ck ELSE 0 END) AS age_30_44__ck,
       sum(CASE WHEN age >= 45 AND age < 60 THEN 1 ELSE 0 END) AS age_45_59,
       sum(CASE WHEN age >= 45 AND age < 60 THEN ck ELSE 0 END) AS age_45_59__ck,
       sum(CASE WHEN age >= 60 THEN 1 ELSE 0 END) AS age_60_plus,
       sum(CASE WHEN age >= 60 THEN ck ELSE 0 END) AS age_60_plus__ck,
       sum(CASE WHEN ethnicity = '08' THEN 1 ELSE 0 END) AS zhuang,
       sum(CASE WHEN ethnicity = '08' THEN ck ELSE 0 END) AS zhuang__ck,
       sum(CASE WHEN ethnicity = '01' THEN 1 ELSE 0 END) AS han,
       sum(CASE WHEN ethnicity = '01' THEN ck ELSE 0 END) AS han__ck,
       sum(CASE WHEN ethnicity IS NULL OR ethnicity NOT IN ('01', '08') THEN 1 ELSE 0 END) AS other_ethnicity,
       sum(CASE WHEN ethnicity IS NULL OR ethnicity NOT IN ('01', '08') THEN ck ELSE 0 END) AS other_ethnicity__ck,
       sum(CASE WHEN hardship + disabled + seriously_ill + registered_poor > 0 THEN 1 ELSE 0 END) AS any_priority_group,
       sum(CASE WHEN hardship + disabled + seriously_ill + registered_poor > 0 THEN ck ELSE 0 END) AS any_priority_group__ck,
       sum(hardship) AS hardship,
       sum(hardship * ck) AS hardship__ck,
       sum(disabled) AS disabled,
       sum(disabled * ck) AS disabled__ck,
       sum(seriously_ill) AS seriously_ill,
       sum(seriously_ill * ck) AS seriously_ill__ck,
       sum(registered_poor) AS registered_poor,
       sum(registered_poor * ck) AS registered_poor__ck
FROM p
JOIN regions rg ON rg.code = p.region_code
GROUP BY p.region_code, rg.name
ORDER BY p.region_code
