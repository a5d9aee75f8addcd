//! `local_date(timestamp)` and `local_day_start(date)`: the configured zone's days in SQL, so
//! that reports (source health's lags and frozen periods) count days as Guangxi does, not in
//! UTC.

use std::sync::Arc;

use arrow_array::{Array, ArrayRef, Date32Array, Int64Array, TimestampMicrosecondArray};
use careledger_model::LocalZone;
use chrono::DateTime;
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::{Result as DfResult, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

#[derive(Debug, PartialEq, Eq, Hash)]
enum Kind {
    Date,
    DayStart,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct LocalDay {
    kind: Kind,
    zone: LocalZone,
    signature: Signature,
}

fn utc_micros() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

impl ScalarUDFImpl for LocalDay {
    fn name(&self) -> &str {
        match self.kind {
            Kind::Date => "local_date",
            Kind::DayStart => "local_day_start",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(match self.kind {
            Kind::Date => DataType::Date32,
            Kind::DayStart => utc_micros(),
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let [arg] = args.args.as_slice() else {
            return exec_err!("{} takes one argument", self.name());
        };
        let zone = self.zone;
        let array = arg.to_array(args.number_rows)?;
        let out: ArrayRef = match self.kind {
            Kind::Date => {
                let micros = datafusion::arrow::compute::cast(&array, &utc_micros())?;
                let micros = datafusion::arrow::compute::cast(&micros, &DataType::Int64)?;
                let micros = micros
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .expect("cast to Int64");
                let days: Date32Array = micros
                    .iter()
                    .map(|m| {
                        let t = DateTime::from_timestamp_micros(m?)?;
                        Some(careledger_model::epoch_days(zone.date_of(t)))
                    })
                    .collect();
                Arc::new(days)
            }
            Kind::DayStart => {
                let days = datafusion::arrow::compute::cast(&array, &DataType::Date32)?;
                let days = days
                    .as_any()
                    .downcast_ref::<Date32Array>()
                    .expect("cast to Date32");
                let starts: TimestampMicrosecondArray = (0..days.len())
                    .map(|i| {
                        (!days.is_null(i)).then(|| {
                            zone.start_of(careledger_model::from_epoch_days(days.value(i)))
                                .timestamp_micros()
                        })
                    })
                    .collect();
                Arc::new(starts.with_timezone("UTC"))
            }
        };
        Ok(ColumnarValue::Array(out))
    }
}

/// Both functions for `zone`.
pub(crate) fn udfs(zone: LocalZone) -> [ScalarUDF; 2] {
    [Kind::Date, Kind::DayStart].map(|kind| {
        let signature = match kind {
            Kind::Date => Signature::any(1, Volatility::Immutable),
            Kind::DayStart => Signature::exact(vec![DataType::Date32], Volatility::Immutable),
        };
        ScalarUDF::new_from_impl(LocalDay {
            kind,
            zone,
            signature,
        })
    })
}
