-- Indexes a DBA would add for the 12 named reports, created after the bulk load,
-- then ANALYZE so the planner has statistics. Text columns are COLLATE "C"
-- (schema.sql), so PG 15 can use btree indexes for starts_with(region_code, ...).

-- Lookup keys: region names, person attributes, code lists, region roll-up, months.
ALTER TABLE regions         ADD PRIMARY KEY (code);              -- every report: JOIN regions rg ON rg.code = ...
ALTER TABLE people          ADD PRIMARY KEY (person_key);        -- one row per woman
CREATE INDEX people_person_id ON people (person_id);               -- stock, source_health: JOIN people ON person_id
ALTER TABLE codes           ADD PRIMARY KEY (list, code);        -- coverage_by_measure, source_health: codes WHERE list = ...
ALTER TABLE region_levels   ADD PRIMARY KEY (code, level);       -- registration_discrepancies: roll a village up to a level
ALTER TABLE calendar_months ADD PRIMARY KEY (month_start);       -- turnover_and_returns: months in [from, to)

-- Ledger runs: every ledger report filters on level plus a region-code prefix or dates.
CREATE INDEX ledger_runs_level_region_start ON ledger_runs (level, region_code, run_start);  -- stock, balance, entries, exits, turnover, priority_*
CREATE INDEX ledger_runs_level_start        ON ledger_runs (level, run_start);               -- last_run / eligible CTEs filtered by level and dates only

-- Per-person facts joined to a woman's episodes or filtered by measure and date.
CREATE INDEX services_person_date     ON services (person_id, service_date);     -- breadth, coverage_by_measure, group_coverage: services within episodes
CREATE INDEX services_measure_date    ON services (measure, service_date);        -- priority_gap*: M1 relief in the 12 months up to as_of
CREATE INDEX status_episodes_person   ON status_episodes (person_id);            -- joins of services / group episodes to episodes
CREATE INDEX group_episodes_person    ON group_episodes (person_id);             -- group_coverage, stock, priority_*: groups held by a woman
CREATE INDEX registrations_person_eff ON registrations (person_id, effective_date);  -- registration_discrepancies: latest action per person

ANALYZE;
