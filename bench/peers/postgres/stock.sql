-- PostgreSQL peer of queries/stock.sql. Changes: date_part on date::timestamp (PG's date_part returns double; the BIGINT cast and age formula are unchanged).
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
    SELECT s.region_code, s.person_id, pe.ethnicity,
           CAST(date_part('year', $as_of::timestamp) - date_part('year', pe.birth_date::timestamp) AS bigint)
             - CASE WHEN date_part('month', $as_of::timestamp) * 100 + date_part('day', $as_of::timestamp)
                         < date_part('month', pe.birth_date::timestamp) * 100 + date_part('day', pe.birth_date::timestamp)
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
       sum(CASE WHEN age < 30 THEN 1 ELSE 0 END) AS age_under_30,
       sum(CASE WHEN age >= 30 AND age < 45 THEN 1 ELSE 0 END) AS age_30_44,
       sum(CASE WHEN age >= 45 AND age < 60 THEN 1 ELSE 0 END) AS age_45_59,
       sum(CASE WHEN age >= 60 THEN 1 ELSE 0 END) AS age_60_plus,
       sum(CASE WHEN ethnicity = '08' THEN 1 ELSE 0 END) AS zhuang,
       sum(CASE WHEN ethnicity = '01' THEN 1 ELSE 0 END) AS han,
       sum(CASE WHEN ethnicity IS NULL OR ethnicity NOT IN ('01', '08') THEN 1 ELSE 0 END) AS other_ethnicity,
       sum(CASE WHEN hardship + disabled + seriously_ill + registered_poor > 0 THEN 1 ELSE 0 END) AS any_priority_group,
       sum(hardship) AS hardship,
       sum(disabled) AS disabled,
       sum(seriously_ill) AS seriously_ill,
       sum(registered_poor) AS registered_poor
FROM p
JOIN regions rg ON rg.code = p.region_code
GROUP BY p.region_code, rg.name
ORDER BY p.region_code
