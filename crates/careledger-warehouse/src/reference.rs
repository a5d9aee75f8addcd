//! Reference data as tables: regions with their ancestors, code lists, and a month calendar.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_array::builder::{BooleanBuilder, Date32Builder, StringBuilder};
use arrow_schema::{DataType, Field, Schema};
use careledger_model::{RegionLevel, regions, vocabulary};
use chrono::{Datelike, NaiveDate};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;

use crate::Result;

const LEVELS: [RegionLevel; 5] = RegionLevel::ALL;

/// Registers one in-memory batch as a table.
pub(crate) fn register(ctx: &SessionContext, name: &str, batch: RecordBatch) -> Result<()> {
    let table = MemTable::try_new(batch.schema(), vec![vec![batch]])?;
    ctx.register_table(name, Arc::new(table))?;
    Ok(())
}

/// `regions` (code, name, level, parent_code, rural, year), `region_levels` (code, level,
/// region_code: the ancestor of `code` at `level`, for every level at or above the code's own),
/// `codes` (list, code, zh, en, measure), `calendar_months` (month_start, month_end).
pub(crate) fn register_reference(ctx: &SessionContext) -> Result<()> {
    let table = regions();
    let mut code = StringBuilder::new();
    let mut name = StringBuilder::new();
    let mut level = StringBuilder::new();
    let mut parent = StringBuilder::new();
    let mut rural = BooleanBuilder::new();
    let mut l_code = StringBuilder::new();
    let mut l_level = StringBuilder::new();
    let mut l_region = StringBuilder::new();
    for r in table.iter() {
        code.append_value(&r.code);
        name.append_value(&r.name);
        level.append_value(r.level.as_str());
        parent.append_option(r.parent_code.as_deref());
        rural.append_value(r.rural);
        for l in LEVELS {
            if let Some(a) = table.ancestor(&r.code, l) {
                l_code.append_value(&r.code);
                l_level.append_value(l.as_str());
                l_region.append_value(&a.code);
            }
        }
    }
    let regions_schema = Arc::new(Schema::new(vec![
        Field::new("code", DataType::Utf8, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("level", DataType::Utf8, false),
        Field::new("parent_code", DataType::Utf8, true),
        Field::new("rural", DataType::Boolean, false),
    ]));
    register(
        ctx,
        "regions",
        RecordBatch::try_new(
            regions_schema,
            vec![
                Arc::new(code.finish()),
                Arc::new(name.finish()),
                Arc::new(level.finish()),
                Arc::new(parent.finish()),
                Arc::new(rural.finish()),
            ],
        )?,
    )?;
    let levels_schema = Arc::new(Schema::new(vec![
        Field::new("code", DataType::Utf8, false),
        Field::new("level", DataType::Utf8, false),
        Field::new("region_code", DataType::Utf8, false),
    ]));
    register(
        ctx,
        "region_levels",
        RecordBatch::try_new(
            levels_schema,
            vec![
                Arc::new(l_code.finish()),
                Arc::new(l_level.finish()),
                Arc::new(l_region.finish()),
            ],
        )?,
    )?;

    let mut list = StringBuilder::new();
    let mut c = StringBuilder::new();
    let mut zh = StringBuilder::new();
    let mut en = StringBuilder::new();
    let mut measure = StringBuilder::new();
    for l in vocabulary().lists() {
        for code in &l.codes {
            list.append_value(&l.list);
            c.append_value(&code.code);
            zh.append_value(&code.zh);
            en.append_value(&code.en);
            measure.append_option(code.measure.as_deref());
        }
    }
    let codes_schema = Arc::new(Schema::new(vec![
        Field::new("list", DataType::Utf8, false),
        Field::new("code", DataType::Utf8, false),
        Field::new("zh", DataType::Utf8, false),
        Field::new("en", DataType::Utf8, false),
        Field::new("measure", DataType::Utf8, true),
    ]));
    register(
        ctx,
        "codes",
        RecordBatch::try_new(
            codes_schema,
            vec![
                Arc::new(list.finish()),
                Arc::new(c.finish()),
                Arc::new(zh.finish()),
                Arc::new(en.finish()),
                Arc::new(measure.finish()),
            ],
        )?,
    )?;

    let mut start = Date32Builder::new();
    let mut end = Date32Builder::new();
    for year in 2000..2050 {
        for month in 1..=12 {
            let s = NaiveDate::from_ymd_opt(year, month, 1).expect("month");
            let e = if month == 12 {
                NaiveDate::from_ymd_opt(year + 1, 1, 1)
            } else {
                NaiveDate::from_ymd_opt(year, month + 1, 1)
            }
            .expect("month");
            start.append_value(careledger_model::epoch_days(s));
            end.append_value(careledger_model::epoch_days(e));
            debug_assert_eq!(s.day(), 1);
        }
    }
    let cal_schema = Arc::new(Schema::new(vec![
        Field::new("month_start", DataType::Date32, false),
        Field::new("month_end", DataType::Date32, false),
    ]));
    register(
        ctx,
        "calendar_months",
        RecordBatch::try_new(
            cal_schema,
            vec![Arc::new(start.finish()), Arc::new(end.finish())],
        )?,
    )
}
