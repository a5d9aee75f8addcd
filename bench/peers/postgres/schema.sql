-- PostgreSQL 15 tables for the careledger peer benchmark: the 15 relations the
-- named reports read, with column types matching the exported Parquet files
-- (string -> text, int64 -> bigint, int32 -> integer, date32 -> date,
-- bool -> boolean, timestamp[us, UTC] -> timestamptz, decimal(14,2) -> numeric(14,2)).
-- Text is COLLATE "C" so ORDER BY on codes/keys sorts bytewise, as careledger
-- (DataFusion) and DuckDB do, whatever the cluster's default locale.
-- NOT NULL where the Parquet field is non-nullable. No indexes here: see indexes.sql.

DROP TABLE IF EXISTS women, life_events, group_flags, services, registrations, batches,
    people, status_episodes, residence, ledger_runs, group_episodes, regions, codes,
    region_levels, calendar_months;

CREATE TABLE women (
    source             text COLLATE "C",
    record_id          text COLLATE "C",
    record_version     bigint,
    op                 text COLLATE "C",
    person_key         text COLLATE "C",
    sex                text COLLATE "C",
    birth_date         date,
    hukou_county       text COLLATE "C",
    region_code        text COLLATE "C",
    ethnicity          text COLLATE "C",
    marital_status     text COLLATE "C",
    education          text COLLATE "C",
    children_under_16  bigint,
    elderly_dependants bigint,
    batch_id           text COLLATE "C" NOT NULL,
    ingested_at        timestamptz NOT NULL,
    person_id bigint
);

CREATE TABLE life_events (
    source         text COLLATE "C",
    record_id      text COLLATE "C",
    record_version bigint,
    op             text COLLATE "C",
    person_key     text COLLATE "C",
    sex            text COLLATE "C",
    birth_date     date,
    hukou_county   text COLLATE "C",
    event_type     text COLLATE "C",
    event_date     date,
    region_code    text COLLATE "C",
    destination    text COLLATE "C",
    work_type      text COLLATE "C",
    batch_id       text COLLATE "C" NOT NULL,
    ingested_at    timestamptz NOT NULL,
    person_id bigint
);

CREATE TABLE group_flags (
    source         text COLLATE "C",
    record_id      text COLLATE "C",
    record_version bigint,
    op             text COLLATE "C",
    person_key     text COLLATE "C",
    sex            text COLLATE "C",
    birth_date     date,
    hukou_county   text COLLATE "C",
    "group"        text COLLATE "C",
    valid_from     date,
    valid_to       date,
    detail         text COLLATE "C",
    batch_id       text COLLATE "C" NOT NULL,
    ingested_at    timestamptz NOT NULL,
    person_id bigint
);

CREATE TABLE services (
    source         text COLLATE "C",
    record_id      text COLLATE "C",
    record_version bigint,
    op             text COLLATE "C",
    person_key     text COLLATE "C",
    sex            text COLLATE "C",
    birth_date     date,
    hukou_county   text COLLATE "C",
    measure        text COLLATE "C",
    service_type   text COLLATE "C",
    service_date   date,
    service_end    date,
    provider_unit  text COLLATE "C",
    region_code    text COLLATE "C",
    amount_yuan    numeric(14,2),
    quantity       bigint,
    batch_id       text COLLATE "C" NOT NULL,
    ingested_at    timestamptz NOT NULL,
    person_id bigint,
    in_episode boolean
);

CREATE TABLE registrations (
    source         text COLLATE "C",
    record_id      text COLLATE "C",
    record_version bigint,
    op             text COLLATE "C",
    person_key     text COLLATE "C",
    sex            text COLLATE "C",
    birth_date     date,
    hukou_county   text COLLATE "C",
    action         text COLLATE "C",
    effective_date date,
    reason         text COLLATE "C",
    region_code    text COLLATE "C",
    batch_id       text COLLATE "C" NOT NULL,
    ingested_at    timestamptz NOT NULL,
    person_id bigint
);

CREATE TABLE batches (
    batch_id        text COLLATE "C" NOT NULL,
    table_name      text COLLATE "C" NOT NULL,
    source          text COLLATE "C" NOT NULL,
    idempotency_key text COLLATE "C",
    batch_seq       bigint,
    format          text COLLATE "C" NOT NULL,
    atomic          boolean NOT NULL,
    rows_received   bigint NOT NULL,
    rows_accepted   bigint NOT NULL,
    rows_rejected   bigint NOT NULL,
    table_version   bigint,
    received_at     timestamptz NOT NULL,
    committed_at    timestamptz NOT NULL,
    receipt         text COLLATE "C" NOT NULL
);

CREATE TABLE people (
    person_key     text COLLATE "C" NOT NULL,
    region_code    text COLLATE "C",
    marital_status text COLLATE "C",
    ethnicity      text COLLATE "C",
    birth_date     date,
    person_id bigint
);

CREATE TABLE status_episodes (
    person_key      text COLLATE "C" NOT NULL,
    episode_no      integer NOT NULL,
    start_date      date NOT NULL,
    end_date        date,
    entry_reason    text COLLATE "C" NOT NULL,
    exit_reason     text COLLATE "C",
    region_at_start text COLLATE "C",
    region_at_end   text COLLATE "C",
    rule_version    text COLLATE "C" NOT NULL,
    person_id bigint
);

CREATE TABLE residence (
    person_key  text COLLATE "C" NOT NULL,
    valid_from  date NOT NULL,
    valid_to    date,
    region_code text COLLATE "C",
    person_id bigint
);

CREATE TABLE ledger_runs (
    level        text COLLATE "C" NOT NULL,
    region_code  text COLLATE "C",
    person_key   text COLLATE "C" NOT NULL,
    episode_no   integer NOT NULL,
    run_start    date NOT NULL,
    run_end      date,
    entry_reason text COLLATE "C" NOT NULL,
    exit_reason  text COLLATE "C",
    person_id bigint
);

CREATE TABLE group_episodes (
    person_key  text COLLATE "C",
    group_code  text COLLATE "C",
    valid_from  date,
    valid_until date,
    detail      text COLLATE "C",
    source      text COLLATE "C",
    person_id bigint
);

CREATE TABLE regions (
    code        text COLLATE "C" NOT NULL,
    name        text COLLATE "C" NOT NULL,
    level       text COLLATE "C" NOT NULL,
    parent_code text COLLATE "C",
    rural       boolean NOT NULL
);

CREATE TABLE codes (
    list    text COLLATE "C" NOT NULL,
    code    text COLLATE "C" NOT NULL,
    zh      text COLLATE "C" NOT NULL,
    en      text COLLATE "C" NOT NULL,
    measure text COLLATE "C"
);

CREATE TABLE region_levels (
    code        text COLLATE "C" NOT NULL,
    level       text COLLATE "C" NOT NULL,
    region_code text COLLATE "C" NOT NULL
);

CREATE TABLE calendar_months (
    month_start date NOT NULL,
    month_end   date NOT NULL
);
