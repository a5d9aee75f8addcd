//! Bounds on what one user query (`POST /v1/sql`) can build, beyond DataFusion's own memory
//! accounting.
//!
//! DataFusion's memory pool counts what its operators buffer (hash tables, sort runs,
//! aggregation state, the recursive work table), not the values expressions build nor the
//! batches on their way between operators: `repeat('x', 2000000000)` allocated 2 GB in one
//! call, and a doubling recursive CTE grew a string until the allocator failed and the process
//! aborted. Three things close that gap:
//!
//! - **Capped functions** ([`install`]): the functions whose output size is set by an argument
//!   rather than by their input (`repeat`, `lpad`, `range`, `array_repeat`, …) are replaced in
//!   the user's session by wrappers of the same name that estimate the output of each call
//!   from its arguments and refuse it, before anything is allocated, past one value's cap,
//!   one list's cap or one call's cap. A query may hold a bounded number of such calls.
//! - **A guard above every operator** ([`guard_plan`]): each batch an operator hands up is
//!   counted against the memory pool (each Arrow buffer once, however many operators pass it
//!   on, for as long as a batch holding it is in flight), is cut into slices small enough
//!   that what the next operator's expressions build from it stays within one batch's budget,
//!   and is refused if one row alone is larger than that budget. Operators that copy a row
//!   into many output rows (joins, window functions) are refused rows wider than
//!   budget / batch size, so one output batch of copies stays within the budget too; `UNNEST`
//!   a row whose copies (its other columns, once per element) would pass the budget.
//! - **A check of the logical plan** ([`check_logical`]): the number of capped calls, and no
//!   growing aggregate (`string_agg`, `array_agg`) as a window function, whose running or
//!   repeated results grow with the square of the rows.
//!
//! At the query's deadline a cancellation flag makes every guard and every join filter fail
//! at once, so the operators stop within one batch rather than at the task's next yield.
//!
//! Refusals are [`QueryLimit`] errors: the gateway answers them as 422 problems naming the
//! function or operator and the limit.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch};
use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::datatypes::{DataType, FieldRef, SchemaRef};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Result, ScalarValue};
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{FunctionRegistry, TaskContext};
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, LogicalPlan, Operator, ReturnFieldArgs, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature, WindowFunctionDefinition,
};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{BinaryExpr, Column, InListExpr, LikeExpr, Literal};
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::windows::WindowAggExec;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, RecordBatchStream,
    SendableRecordBatchStream,
};
use datafusion::prelude::SessionContext;
use futures::Stream;

/// A query asked for more than a limit of this module allows.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct QueryLimit(pub(crate) String);

fn refuse(detail: String) -> DataFusionError {
    DataFusionError::External(Box::new(QueryLimit(detail)))
}

/// The limits of one query, derived from the query memory limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Limits {
    /// Bytes one batch may hold, and what an operator's expressions may build from one batch.
    pub(crate) batch_bytes: usize,
    /// Bytes one value built by a capped function may hold.
    pub(crate) value_bytes: usize,
    /// Elements one list built by a capped function may hold.
    pub(crate) list_elements: usize,
    /// Calls of capped functions one query may make.
    pub(crate) capped_calls: usize,
    /// Character pairs one `levenshtein` call may compare (its work is their product).
    pub(crate) edit_work: usize,
}

const MIB: usize = 1 << 20;

/// How much larger than their inputs the expressions over a batch are assumed to grow
/// (`to_char` formats, case mapping, casts of numbers to text): what the next operator
/// builds from a batch is budgeted at this many times the bytes its expressions read.
const GROWTH: usize = 16;

impl Limits {
    /// The limits for a query memory limit of `memory` bytes: a batch may hold an eighth of
    /// it (between 8 and 256 MiB); one value 16 MiB (less for small limits).
    pub(crate) fn for_memory(memory: usize) -> Limits {
        let batch_bytes = (memory / 8).clamp(8 * MIB, 256 * MIB);
        Limits {
            batch_bytes,
            value_bytes: (16 * MIB).min(batch_bytes / 4),
            list_elements: 1_000_000,
            capped_calls: 32,
            edit_work: 1 << 24,
        }
    }

    /// Bytes all the calls of capped functions over one batch may build together.
    fn calls_bytes(&self) -> usize {
        self.batch_bytes / 2
    }
}

/// "16 MiB", "300 bytes".
fn bytes_text(n: usize) -> String {
    if n >= 10 * MIB {
        format!("{} MiB", n / MIB)
    } else if n >= 10 * 1024 {
        format!("{} KiB", n / 1024)
    } else {
        format!("{n} bytes")
    }
}

// ----------------------------------------------------------------------------------------
// Capped functions
// ----------------------------------------------------------------------------------------

/// The functions replaced by capped wrappers, and how each one's output is estimated.
const CAPPED: [(&str, Rule); 17] = [
    ("repeat", Rule::Repeat),
    ("lpad", Rule::Pad),
    ("rpad", Rule::Pad),
    ("overlay", Rule::Overlay),
    ("replace", Rule::Replace),
    ("regexp_replace", Rule::RegexpReplace),
    ("levenshtein", Rule::Levenshtein),
    ("range", Rule::Range),
    ("generate_series", Rule::Range),
    ("array_repeat", Rule::ArrayRepeat),
    ("array_resize", Rule::ArrayResize),
    ("array_replace", Rule::ArrayReplace),
    ("array_replace_n", Rule::ArrayReplace),
    ("array_replace_all", Rule::ArrayReplace),
    ("array_to_string", Rule::ArrayToString),
    ("arrow_cast", Rule::Cast),
    ("arrow_try_cast", Rule::Cast),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Rule {
    /// `repeat(s, n)`: |s| × n.
    Repeat,
    /// `lpad` / `rpad(s, n [, fill])`: n characters.
    Pad,
    /// `overlay(s placing t from p [for k])`: at most 2|s| + |t| (a negative k re-emits).
    Overlay,
    /// `replace(s, from, to)`: |s| + |s|/|from| × |to|.
    Replace,
    /// `regexp_replace(s, pattern, replacement [, flags])`: every match (up to |s| + 1 of
    /// them) replaced, back-references each at most the matched text.
    RegexpReplace,
    /// `levenshtein(a, b)`: no large value, but |a| × |b| steps in one call.
    Levenshtein,
    /// `range` / `generate_series(start, stop [, step])` as a scalar: a list.
    Range,
    /// `array_repeat(element, n)`: n copies.
    ArrayRepeat,
    /// `array_resize(list, n [, value])`: n elements.
    ArrayResize,
    /// `array_replace[_n|_all](list, from, to [, n])`: every element may become `to`.
    ArrayReplace,
    /// `array_to_string(list, delimiter [, null_string])`: a delimiter per element.
    ArrayToString,
    /// `arrow_cast` / `arrow_try_cast(x, type)`: a fixed-size type allocates its size per
    /// row even for NULL.
    Cast,
}

/// Capped calls of one query: how many bytes each may build over one batch.
#[derive(Debug)]
pub(crate) struct CallBudget {
    per_call: AtomicUsize,
}

impl CallBudget {
    /// Shares the calls' budget among the `calls` capped calls of the query.
    fn set_calls(&self, limits: &Limits, calls: usize) {
        self.per_call
            .store(limits.calls_bytes() / calls.max(1), Ordering::Relaxed);
    }
}

/// A capped function: the engine's function under the same name, refusing a call whose
/// output would pass a limit before it runs.
#[derive(Debug)]
struct Capped {
    inner: ScalarUDF,
    rule: Rule,
    limits: Limits,
    budget: Arc<CallBudget>,
}

impl PartialEq for Capped {
    fn eq(&self, other: &Capped) -> bool {
        self.inner == other.inner && self.rule == other.rule && self.limits == other.limits
    }
}

impl Eq for Capped {}

impl Hash for Capped {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.hash(state);
        self.rule.hash(state);
        self.limits.hash(state);
    }
}

/// Registers the capped wrappers in `ctx` (a user query's own session) in place of the
/// engine's functions. The returned budget is shared by the wrappers: [`check_logical`] sets
/// it from the number of capped calls in the query.
pub(crate) fn install(ctx: &SessionContext, limits: &Limits) -> Result<Arc<CallBudget>> {
    let budget = Arc::new(CallBudget {
        per_call: AtomicUsize::new(limits.calls_bytes()),
    });
    for (name, rule) in CAPPED {
        let Ok(inner) = ctx.udf(name) else {
            continue; // not in this build's function set
        };
        if (inner.inner().as_ref() as &dyn Any).is::<Capped>() {
            continue;
        }
        ctx.register_udf(ScalarUDF::new_from_impl(Capped {
            inner: inner.as_ref().clone(),
            rule,
            limits: *limits,
            budget: budget.clone(),
        }));
    }
    Ok(budget)
}

impl ScalarUDFImpl for Capped {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.inner.inner().schema_name(args)
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.inner().return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let field = self.inner.inner().return_field_from_args(args)?;
        if self.rule == Rule::Cast {
            let per_row = fixed_bytes(field.data_type());
            if per_row > self.limits.value_bytes {
                return Err(refuse(format!(
                    "{}() to {} would allocate {} for every row, even a NULL one; one value may hold at most {}",
                    self.name(),
                    field.data_type(),
                    bytes_text(per_row),
                    bytes_text(self.limits.value_bytes)
                )));
            }
        }
        Ok(field)
    }

    fn with_updated_config(&self, config: &datafusion::config::ConfigOptions) -> Option<ScalarUDF> {
        let inner = self.inner.inner().with_updated_config(config)?;
        Some(ScalarUDF::new_from_impl(Capped {
            inner,
            rule: self.rule,
            limits: self.limits,
            budget: self.budget.clone(),
        }))
    }

    fn is_strict(&self) -> bool {
        self.inner.inner().is_strict()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        self.check(&args.args, args.number_rows)?;
        self.inner.inner().invoke_with_args(args)
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        self.inner.inner().simplify(args, info)
    }

    fn short_circuits(&self) -> bool {
        self.inner.inner().short_circuits()
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.inner().coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.inner().documentation()
    }
}

/// Bytes a fixed-size type takes per row whatever the value (FixedSizeBinary, FixedSizeList
/// and structs of them); small for every other type.
fn fixed_bytes(t: &DataType) -> usize {
    match t {
        DataType::FixedSizeBinary(n) => usize::try_from(*n).unwrap_or(0),
        DataType::FixedSizeList(f, n) => usize::try_from(*n)
            .unwrap_or(0)
            .saturating_mul(fixed_bytes(f.data_type()).max(1)),
        DataType::Struct(fields) => fields
            .iter()
            .fold(0usize, |a, f| a.saturating_add(fixed_bytes(f.data_type()))),
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::ListView(f)
        | DataType::LargeListView(f)
        | DataType::Map(f, _) => fixed_bytes(f.data_type()).min(16),
        DataType::Dictionary(_, v) => fixed_bytes(v),
        other => other.primitive_width().unwrap_or(16),
    }
}

/// One argument of a call, as an array (a scalar is a one-row array used for every row).
struct Arg {
    array: ArrayRef,
    scalar: bool,
    widths: OnceLock<Vec<usize>>,
}

impl Arg {
    fn of(v: &ColumnarValue) -> Result<Arg> {
        Ok(match v {
            ColumnarValue::Array(a) => Arg {
                array: a.clone(),
                scalar: false,
                widths: OnceLock::new(),
            },
            ColumnarValue::Scalar(s) => Arg {
                array: s.to_array()?,
                scalar: true,
                widths: OnceLock::new(),
            },
        })
    }

    fn at(&self, row: usize) -> usize {
        if self.scalar { 0 } else { row }
    }

    fn is_null(&self, row: usize) -> bool {
        self.array.is_null(self.at(row))
    }

    /// The text of a string argument (None for NULL or another type).
    fn text(&self, row: usize) -> Option<&str> {
        let i = self.at(row);
        if self.array.is_null(i) {
            return None;
        }
        match self.array.data_type() {
            DataType::Utf8 => Some(self.array.as_string::<i32>().value(i)),
            DataType::LargeUtf8 => Some(self.array.as_string::<i64>().value(i)),
            DataType::Utf8View => Some(self.array.as_string_view().value(i)),
            _ => None,
        }
    }

    /// Bytes of a string or binary value (0 for NULL); the approximate size of another.
    fn bytes(&self, row: usize) -> usize {
        let i = self.at(row);
        if self.array.is_null(i) {
            return 0;
        }
        match self.array.data_type() {
            DataType::Utf8 => self.array.as_string::<i32>().value(i).len(),
            DataType::LargeUtf8 => self.array.as_string::<i64>().value(i).len(),
            DataType::Utf8View => self.array.as_string_view().value(i).len(),
            DataType::Binary => self.array.as_binary::<i32>().value(i).len(),
            DataType::LargeBinary => self.array.as_binary::<i64>().value(i).len(),
            DataType::BinaryView => self.array.as_binary_view().value(i).len(),
            _ => self.width(row),
        }
    }

    /// Approximate bytes of the value with its offsets (see [`row_widths`]).
    fn width(&self, row: usize) -> usize {
        self.widths.get_or_init(|| row_widths(self.array.as_ref()))[self.at(row)]
    }

    /// Elements of a list value (0 for NULL or another type).
    fn list_len(&self, row: usize) -> usize {
        let i = self.at(row);
        if self.array.is_null(i) {
            return 0;
        }
        match self.array.data_type() {
            DataType::List(_) => self.array.as_list::<i32>().value_length(i) as usize,
            DataType::LargeList(_) => self.array.as_list::<i64>().value_length(i) as usize,
            DataType::FixedSizeList(_, n) => *n as usize,
            _ => 0,
        }
    }

    /// The argument as 64-bit integers (a NULL or an argument that is no integer: None).
    fn ints(&self) -> Option<Int64Array> {
        let cast = datafusion::arrow::compute::cast(self.array.as_ref(), &DataType::Int64).ok()?;
        Some(
            cast.as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                .clone(),
        )
    }
}

fn int_at(ints: Option<&Int64Array>, arg: &Arg, row: usize) -> Option<i64> {
    let ints = ints?;
    let i = arg.at(row);
    ints.is_valid(i).then(|| ints.value(i))
}

/// What one call would build.
#[derive(Debug, Default)]
struct Estimate {
    largest_value: usize,
    total_bytes: usize,
    longest_list: usize,
    total_elements: usize,
    work: usize,
}

impl Estimate {
    fn value(&mut self, bytes: usize, elements: usize) {
        self.largest_value = self.largest_value.max(bytes);
        self.total_bytes = self.total_bytes.saturating_add(bytes);
        self.longest_list = self.longest_list.max(elements);
        self.total_elements = self.total_elements.saturating_add(elements);
    }
}

impl Capped {
    /// Refuses the call if what it would build passes a limit.
    fn check(&self, args: &[ColumnarValue], number_rows: usize) -> Result<()> {
        if self.rule == Rule::Cast {
            return Ok(());
        }
        let rows = if args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_))) {
            1
        } else {
            number_rows
        };
        let args = args.iter().map(Arg::of).collect::<Result<Vec<_>>>()?;
        let est = self.estimate(&args, rows)?;
        let name = self.name();
        let l = &self.limits;
        if est.longest_list > l.list_elements {
            return Err(refuse(format!(
                "{name}() would build a list of {} elements; one list may hold at most {}",
                est.longest_list, l.list_elements
            )));
        }
        if est.largest_value > l.value_bytes {
            return Err(refuse(format!(
                "{name}() would build a value of {} bytes; one value may hold at most {} ({} bytes)",
                est.largest_value,
                bytes_text(l.value_bytes),
                l.value_bytes
            )));
        }
        let per_call = self.budget.per_call.load(Ordering::Relaxed);
        if est.total_bytes > per_call {
            return Err(refuse(format!(
                "{name}() would build {} for {rows} rows at once; the calls of this query may build at most {} each per batch (fewer and smaller calls, or fewer rows)",
                bytes_text(est.total_bytes),
                bytes_text(per_call)
            )));
        }
        if est.work > l.edit_work {
            return Err(refuse(format!(
                "{name}() would compare {} pairs of characters in one batch; at most {} may be compared at once (shorter strings)",
                est.work, l.edit_work
            )));
        }
        Ok(())
    }

    fn estimate(&self, args: &[Arg], rows: usize) -> Result<Estimate> {
        let mut est = Estimate::default();
        let arg = |i: usize| args.get(i);
        match self.rule {
            Rule::Repeat => {
                let (Some(s), Some(n)) = (arg(0), arg(1)) else {
                    return Ok(est);
                };
                let counts = n.ints();
                for row in 0..rows {
                    let times = int_at(counts.as_ref(), n, row).unwrap_or(0).max(0) as usize;
                    est.value(s.bytes(row).saturating_mul(times), 0);
                }
            }
            Rule::Pad => {
                let (Some(s), Some(n)) = (arg(0), arg(1)) else {
                    return Ok(est);
                };
                let counts = n.ints();
                let fill = arg(2);
                for row in 0..rows {
                    let chars = int_at(counts.as_ref(), n, row).unwrap_or(0).max(0) as usize;
                    let ascii = s.text(row).is_none_or(str::is_ascii)
                        && fill.and_then(|f| f.text(row)).is_none_or(str::is_ascii);
                    let per_char = if ascii { 1 } else { 4 };
                    est.value(chars.saturating_mul(per_char), 0);
                }
            }
            Rule::Overlay => {
                let (Some(s), Some(t)) = (arg(0), arg(1)) else {
                    return Ok(est);
                };
                for row in 0..rows {
                    est.value(2 * s.bytes(row) + t.bytes(row), 0);
                }
            }
            Rule::Replace => {
                let (Some(s), Some(from), Some(to)) = (arg(0), arg(1), arg(2)) else {
                    return Ok(est);
                };
                for row in 0..rows {
                    let (len, from) = (s.bytes(row), from.bytes(row));
                    let out = match len.checked_div(from) {
                        // The engine returns the string unchanged for an empty `from`.
                        None => len,
                        Some(n) => len.saturating_add(n.saturating_mul(to.bytes(row))),
                    };
                    est.value(out, 0);
                }
            }
            Rule::RegexpReplace => {
                let (Some(s), Some(repl)) = (arg(0), arg(2)) else {
                    return Ok(est);
                };
                for row in 0..rows {
                    let len = s.bytes(row);
                    let r = repl.bytes(row);
                    let out = len.saturating_add((2 * len + 1).saturating_mul(r));
                    est.value(out, 0);
                }
            }
            Rule::Levenshtein => {
                let (Some(a), Some(b)) = (arg(0), arg(1)) else {
                    return Ok(est);
                };
                for row in 0..rows {
                    est.work = est
                        .work
                        .saturating_add(a.bytes(row).saturating_mul(b.bytes(row)));
                }
            }
            Rule::Range => self.estimate_range(args, rows, &mut est)?,
            Rule::ArrayRepeat => {
                let (Some(e), Some(n)) = (arg(0), arg(1)) else {
                    return Ok(est);
                };
                let counts = n.ints();
                for row in 0..rows {
                    let times = int_at(counts.as_ref(), n, row).unwrap_or(0).max(0) as usize;
                    est.value(times.saturating_mul(e.width(row)), times);
                }
            }
            Rule::ArrayResize => {
                let (Some(list), Some(n)) = (arg(0), arg(1)) else {
                    return Ok(est);
                };
                let counts = n.ints();
                let value = arg(2);
                for row in 0..rows {
                    if list.is_null(row) {
                        continue;
                    }
                    let size = int_at(counts.as_ref(), n, row).unwrap_or(0).max(0) as usize;
                    let each = value.map_or(8, |v| v.width(row)).max(8);
                    est.value(
                        list.width(row).saturating_add(size.saturating_mul(each)),
                        size,
                    );
                }
            }
            Rule::ArrayReplace => {
                let (Some(list), Some(to)) = (arg(0), arg(2)) else {
                    return Ok(est);
                };
                for row in 0..rows {
                    let n = list.list_len(row);
                    est.value(
                        list.width(row)
                            .saturating_add(n.saturating_mul(to.width(row))),
                        n,
                    );
                }
            }
            Rule::ArrayToString => {
                let (Some(list), Some(sep)) = (arg(0), arg(1)) else {
                    return Ok(est);
                };
                let nulls = arg(2);
                for row in 0..rows {
                    // Every element takes at least one byte of the width, so the width bounds
                    // the elements (nested lists flattened) as well as their text.
                    let width = list.width(row);
                    let per = sep.bytes(row) + nulls.map_or(0, |n| n.bytes(row));
                    est.value(
                        width
                            .saturating_mul(4)
                            .saturating_add(width.saturating_mul(per)),
                        0,
                    );
                }
            }
            Rule::Cast => {}
        }
        Ok(est)
    }

    /// `range` / `generate_series`: integer ranges counted exactly; date and timestamp
    /// ranges bounded by their step's shortest length (28-day months, 23-hour days), or,
    /// for a step mixing signs (`1 month - 30 days`), walked up to the limits.
    fn estimate_range(&self, args: &[Arg], rows: usize, est: &mut Estimate) -> Result<()> {
        use datafusion::arrow::datatypes::{
            Date32Type, IntervalMonthDayNanoType, TimestampNanosecondType,
        };
        let upper = self.name() == "generate_series";
        if args.iter().any(|a| a.array.data_type().is_null()) {
            return Ok(());
        }
        let first = args[0].array.data_type().clone();
        match first {
            DataType::Date32 | DataType::Date64 | DataType::Timestamp(..) if args.len() == 3 => {
                let date = !matches!(first, DataType::Timestamp(..));
                let target = if date {
                    DataType::Date32
                } else {
                    DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Nanosecond, None)
                };
                let bound = |a: &Arg| -> Result<Int64Array> {
                    let c = datafusion::arrow::compute::cast(a.array.as_ref(), &target)?;
                    let c = datafusion::arrow::compute::cast(&c, &DataType::Int64)?;
                    Ok(c.as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                        .clone())
                };
                let (start, stop) = (bound(&args[0])?, bound(&args[1])?);
                let step = args[2]
                    .array
                    .as_primitive_opt::<IntervalMonthDayNanoType>()
                    .cloned();
                let Some(step) = step else { return Ok(()) };
                let tz: Option<datafusion::arrow::array::timezone::Tz> = match &first {
                    DataType::Timestamp(_, tz) => tz.as_deref().unwrap_or("+00").parse().ok(),
                    _ => None,
                };
                let unit: i64 = if date { 1 } else { 86_400_000_000_000 };
                for row in 0..rows {
                    let (a, b, s) = (args[0].at(row), args[1].at(row), args[2].at(row));
                    if start.is_null(a) || stop.is_null(b) || step.is_null(s) {
                        continue;
                    }
                    let (lo, hi, st) = (start.value(a), stop.value(b), step.value(s));
                    let (months, days, nanos) = IntervalMonthDayNanoType::to_parts(st);
                    let parts = [i64::from(months), i64::from(days), nanos];
                    let all_pos = parts.iter().all(|p| *p >= 0);
                    let all_neg = parts.iter().all(|p| *p <= 0);
                    let elements = if all_pos || all_neg {
                        // Shortest step, in days (dates) or nanoseconds (timestamps).
                        let shortest = if date {
                            (i64::from(months).abs() * 28 + i64::from(days).abs()) as i128
                        } else {
                            i128::from(months).abs() * 28 * i128::from(unit)
                                + i128::from(days).abs() * 23 * 3_600_000_000_000
                                + i128::from(nanos).abs()
                        };
                        if shortest == 0 {
                            0 // the engine refuses a zero step
                        } else {
                            let span = (i128::from(hi) - i128::from(lo)).unsigned_abs();
                            usize::try_from(span / shortest.unsigned_abs() + 1)
                                .unwrap_or(usize::MAX)
                        }
                    } else {
                        // Walk it, as the engine would, stopping past the limit.
                        let cap = self.limits.list_elements + 1;
                        let mut n = 0usize;
                        if date {
                            let (lo, hi) = (lo as i32, hi as i32);
                            let neg = months < 0 || days < 0;
                            let mut cur = Some(lo);
                            while let Some(d) = cur {
                                if (neg && d < hi) || (!neg && d > hi) || n >= cap {
                                    break;
                                }
                                n += 1;
                                cur = Date32Type::add_month_day_nano_opt(d, st);
                            }
                        } else if let Some(tz) = tz {
                            let neg = TimestampNanosecondType::add_month_day_nano(lo, st, tz)
                                .is_some_and(|t| t < lo);
                            let mut cur = Some(lo);
                            while let Some(t) = cur {
                                let end = if upper {
                                    (neg && t < hi) || (!neg && t > hi)
                                } else {
                                    (neg && t <= hi) || (!neg && t >= hi)
                                };
                                if end || n >= cap {
                                    break;
                                }
                                n += 1;
                                cur = TimestampNanosecondType::add_month_day_nano(t, st, tz);
                            }
                        }
                        n
                    };
                    est.value(elements.saturating_mul(8), elements);
                }
            }
            _ => {
                // Integers: (stop) | (start, stop) | (start, stop, step).
                let ints: Vec<Option<Int64Array>> = args.iter().map(Arg::ints).collect();
                let get = |i: usize, row: usize| int_at(ints[i].as_ref(), &args[i], row);
                for row in 0..rows {
                    let (start, stop, step) = match args.len() {
                        1 => (Some(0), get(0, row), Some(1)),
                        2 => (get(0, row), get(1, row), Some(1)),
                        _ => (get(0, row), get(1, row), get(2, row)),
                    };
                    let (Some(start), Some(stop), Some(step)) = (start, stop, step) else {
                        continue;
                    };
                    let elements = int_range_len(start, stop, step, upper);
                    est.value(elements.saturating_mul(8), elements);
                }
            }
        }
        Ok(())
    }
}

/// Elements of an integer `range` (`upper`: `generate_series`, stop included).
fn int_range_len(start: i64, stop: i64, step: i64, upper: bool) -> usize {
    if step == 0 || (!upper && start == stop) {
        return 0;
    }
    let limit = match (step > 0, upper) {
        (true, true) | (false, true) => stop,
        (true, false) => stop.saturating_sub(1),
        (false, false) => stop.saturating_add(1),
    };
    if (step > 0 && start > limit) || (step < 0 && start < limit) {
        return 0;
    }
    usize::try_from(start.abs_diff(limit) / step.unsigned_abs())
        .unwrap_or(usize::MAX)
        .saturating_add(1)
}

// ----------------------------------------------------------------------------------------
// The logical check
// ----------------------------------------------------------------------------------------

/// Aggregates whose result grows with every row they see: as window functions their
/// running (or repeated) results grow with the square of the rows.
const GROWING_AGGREGATES: [&str; 2] = ["string_agg", "array_agg"];

/// Counts the capped calls of `plan` (refusing more than the limit) and shares the calls'
/// budget among them; refuses a growing aggregate used as a window function.
pub(crate) fn check_logical(
    plan: &LogicalPlan,
    limits: &Limits,
    budget: &CallBudget,
) -> Result<()> {
    let mut calls = 0usize;
    let mut problem: Option<String> = None;
    plan.apply_with_subqueries(|node| {
        node.apply_expressions(|e| {
            e.apply(|x| {
                match x {
                    Expr::ScalarFunction(f)
                        if (f.func.inner().as_ref() as &dyn Any).is::<Capped>() =>
                    {
                        calls += 1;
                    }
                    Expr::WindowFunction(w) => {
                        if let WindowFunctionDefinition::AggregateUDF(udaf) = &w.fun
                            && GROWING_AGGREGATES.contains(&udaf.name())
                        {
                            problem = Some(format!(
                                "{}() cannot be a window function here: its result grows with every row, so the running or repeated results grow with the square of the rows; aggregate with GROUP BY and join the result",
                                udaf.name()
                            ));
                            return Ok(TreeNodeRecursion::Stop);
                        }
                    }
                    _ => {}
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    })?;
    if let Some(p) = problem {
        return Err(refuse(p));
    }
    if calls > limits.capped_calls {
        return Err(refuse(format!(
            "the query calls functions that build values of a size set by their arguments (repeat, lpad, rpad, range, array_repeat, …) {calls} times; at most {} calls are allowed",
            limits.capped_calls
        )));
    }
    budget.set_calls(limits, calls);
    Ok(())
}

// ----------------------------------------------------------------------------------------
// The guard above every operator
// ----------------------------------------------------------------------------------------

/// What the guards of one query share: the limits, the memory reservation on the pool and
/// the Arrow buffers in flight (counted once each).
#[derive(Debug)]
struct QueryMemory {
    limits: Limits,
    /// Rows of one batch (`datafusion.execution.batch_size`).
    batch_rows: usize,
    /// The widest row an operator that copies rows may take.
    row_copy_bytes: usize,
    reservation: OnceLock<MemoryReservation>,
    held: Mutex<HashMap<usize, HeldBuffer>>,
    /// The largest result of a scalar subquery so far (broadcast to every row that uses it).
    subquery_bytes: AtomicUsize,
    /// Set at the query's deadline: every guard and join filter then fails at once, so the
    /// operators stop within one batch instead of at the task's next yield.
    cancel: Arc<AtomicBool>,
}

#[derive(Debug)]
struct HeldBuffer {
    /// Kept so its address cannot be reused by another allocation while it is counted.
    _buffer: Buffer,
    holders: usize,
    bytes: usize,
}

impl QueryMemory {
    fn reservation(&self, ctx: &TaskContext) -> &MemoryReservation {
        self.reservation.get_or_init(|| {
            MemoryConsumer::new("user SQL batches in flight").register(ctx.memory_pool())
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<usize, HeldBuffer>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts the buffers of `batch` not counted yet (`counted`: false for data that was in
    /// memory before the query, such as the derived tables) and returns their keys.
    fn hold(&self, batch: &RecordBatch, counted: bool) -> Result<Vec<usize>> {
        let mut buffers = Vec::new();
        for column in batch.columns() {
            collect_buffers(&column.to_data(), &mut buffers);
        }
        let mut keys = Vec::with_capacity(buffers.len());
        let mut added = 0usize;
        let mut held = self.held();
        for b in buffers {
            let key = b.data_ptr().as_ptr() as usize;
            let entry = held.entry(key).or_insert_with(|| {
                let bytes = if counted { b.capacity() } else { 0 };
                added += bytes;
                HeldBuffer {
                    _buffer: b,
                    holders: 0,
                    bytes,
                }
            });
            entry.holders += 1;
            keys.push(key);
        }
        if added > 0 {
            let grown = self.reservation.get().map_or(Ok(()), |r| r.try_grow(added));
            if let Err(e) = grown {
                for key in &keys {
                    if let Some(entry) = held.get_mut(key) {
                        entry.holders -= 1;
                        if entry.holders == 0 {
                            held.remove(key);
                        }
                    }
                }
                return Err(e);
            }
        }
        Ok(keys)
    }

    fn release(&self, keys: &[usize]) {
        if keys.is_empty() {
            return;
        }
        let mut freed = 0usize;
        let mut held = self.held();
        for key in keys {
            if let Some(entry) = held.get_mut(key) {
                entry.holders -= 1;
                if entry.holders == 0 {
                    freed += entry.bytes;
                    held.remove(key);
                }
            }
        }
        if let Some(r) = self.reservation.get() {
            r.shrink(freed.min(r.size()));
        }
    }
}

fn collect_buffers(data: &datafusion::arrow::array::ArrayData, out: &mut Vec<Buffer>) {
    out.extend(data.buffers().iter().cloned());
    if let Some(nulls) = data.nulls() {
        out.push(nulls.buffer().clone());
    }
    for child in data.child_data() {
        collect_buffers(child, out);
    }
}

/// How an operator consumes the batches of one of its inputs.
#[derive(Debug, Default)]
struct Shape {
    /// The consuming operator, for messages.
    parent: String,
    /// Per input column: references to it in expressions that build values from it.
    refs: Vec<usize>,
    /// Bytes of string and binary literals broadcast to every row by those expressions.
    literal_bytes: usize,
    /// Scalar subqueries (and other leaves of unknown width) in those expressions.
    opaque: usize,
    /// Joins and window functions copy a row into many output rows.
    copies_rows: bool,
    /// UNNEST: the input columns it unnests (index → depth); the others are copied.
    unnest: Option<HashMap<usize, usize>>,
    /// WindowAggExec holds its whole input and emits it in one batch with the window
    /// columns: (bytes per row of fixed-width results, results that copy a value).
    window: Option<(usize, usize)>,
    /// False for a scan of tables already in memory (not the query's to count).
    counted: bool,
    /// A scalar subquery's plan: its result is broadcast.
    subquery: bool,
    /// The batches are kept until the stream ends (the result collected whole).
    keep: bool,
}

/// Wraps every operator of `plan` in a guard (and every operator with inputs in a
/// [`CooperativeExec`], so a long query yields to the runtime and its deadline fires): see the
/// module documentation. `collect`: the result is collected whole, so the guard above the root
/// keeps every batch counted until the stream ends. Once `cancel` is set, every guard fails
/// its next poll and every join filter its next evaluation (a join whose filter drops every
/// row otherwise loops over all pairs of a probe batch without yielding).
pub(crate) fn guard_plan(
    plan: Arc<dyn ExecutionPlan>,
    limits: &Limits,
    batch_rows: usize,
    collect: bool,
    cancel: Arc<AtomicBool>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let batch_rows = batch_rows.max(1);
    let query = Arc::new(QueryMemory {
        limits: *limits,
        batch_rows,
        row_copy_bytes: (limits.batch_bytes / batch_rows).max(4096),
        reservation: OnceLock::new(),
        held: Mutex::new(HashMap::new()),
        subquery_bytes: AtomicUsize::new(0),
        cancel,
    });
    let plan = plan
        .transform_up(|node: Arc<dyn ExecutionPlan>| {
            if node.children().is_empty() || node.is::<GuardExec>() {
                return Ok(Transformed::no(node));
            }
            if node.is::<CooperativeExec>() {
                // A pass-through: its input is guarded by the guard above it.
                return Ok(Transformed::no(node));
            }
            let node = with_cancellable_filter(node, &query.cancel)?;
            let children: Vec<Arc<dyn ExecutionPlan>> = node
                .children()
                .into_iter()
                .enumerate()
                .map(|(i, child)| {
                    Arc::new(GuardExec {
                        input: child.clone(),
                        shape: Arc::new(shape_of(node.as_ref(), i, child)),
                        query: query.clone(),
                    }) as Arc<dyn ExecutionPlan>
                })
                .collect();
            let node = replace_children_if_necessary(node, children)?;
            Ok(Transformed::yes(
                Arc::new(CooperativeExec::new(node)) as Arc<dyn ExecutionPlan>
            ))
        })?
        .data;
    let root = Shape {
        parent: "the result".into(),
        counted: !is_memory_source(&plan),
        keep: collect,
        ..Shape::default()
    };
    Ok(Arc::new(GuardExec {
        input: plan,
        shape: Arc::new(root),
        query,
    }))
}

/// A join whose filter is checked for cancellation at every evaluation.
fn with_cancellable_filter(
    node: Arc<dyn ExecutionPlan>,
    cancel: &Arc<AtomicBool>,
) -> Result<Arc<dyn ExecutionPlan>> {
    use datafusion::physical_plan::joins::utils::JoinFilter;
    use datafusion::physical_plan::joins::{
        HashJoinExec, NestedLoopJoinExec, NestedLoopJoinExecBuilder,
    };
    let wrap = |f: &JoinFilter| {
        JoinFilter::new(
            Arc::new(CancelCheck {
                inner: f.expression().clone(),
                cancel: cancel.clone(),
            }),
            f.column_indices().to_vec(),
            f.schema().clone(),
        )
    };
    if let Some(j) = node.downcast_ref::<NestedLoopJoinExec>()
        && let Some(f) = j.filter()
    {
        let built = NestedLoopJoinExecBuilder::from(j)
            .with_filter(Some(wrap(f)))
            .build()?;
        return Ok(Arc::new(built));
    }
    if let Some(j) = node.downcast_ref::<HashJoinExec>()
        && let Some(f) = j.filter()
    {
        let built = j.builder().with_filter(Some(wrap(f))).build()?;
        return Ok(Arc::new(built));
    }
    Ok(node)
}

/// A join filter that fails once its query is cancelled.
#[derive(Debug)]
struct CancelCheck {
    inner: Arc<dyn PhysicalExpr>,
    cancel: Arc<AtomicBool>,
}

impl PartialEq for CancelCheck {
    fn eq(&self, other: &CancelCheck) -> bool {
        self.inner.as_ref() == other.inner.as_ref()
    }
}

impl Eq for CancelCheck {}

impl Hash for CancelCheck {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.as_ref().hash(state);
    }
}

impl std::fmt::Display for CancelCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.inner)
    }
}

fn cancelled() -> DataFusionError {
    DataFusionError::Execution("the query was stopped at its deadline".into())
}

impl PhysicalExpr for CancelCheck {
    fn data_type(&self, input_schema: &datafusion::arrow::datatypes::Schema) -> Result<DataType> {
        self.inner.data_type(input_schema)
    }

    fn nullable(&self, input_schema: &datafusion::arrow::datatypes::Schema) -> Result<bool> {
        self.inner.nullable(input_schema)
    }

    fn return_field(
        &self,
        input_schema: &datafusion::arrow::datatypes::Schema,
    ) -> Result<FieldRef> {
        self.inner.return_field(input_schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(cancelled());
        }
        self.inner.evaluate(batch)
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.inner]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal(
                "a cancellation check has one child".into(),
            ));
        }
        Ok(Arc::new(CancelCheck {
            inner: children.swap_remove(0),
            cancel: self.cancel.clone(),
        }))
    }

    fn fmt_sql(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt_sql(f)
    }
}

/// Whether `plan` (under pass-through wrappers) scans a table already in memory.
fn is_memory_source(plan: &Arc<dyn ExecutionPlan>) -> bool {
    let mut p = plan;
    while let Some(c) = p.downcast_ref::<CooperativeExec>() {
        p = c.input();
    }
    p.downcast_ref::<datafusion::datasource::memory::DataSourceExec>()
        .is_some_and(|d| {
            d.data_source()
                .is::<datafusion::datasource::memory::MemorySourceConfig>()
        })
}

fn shape_of(parent: &dyn ExecutionPlan, index: usize, child: &Arc<dyn ExecutionPlan>) -> Shape {
    let name = parent.name().to_string();
    let mut shape = Shape {
        copies_rows: name.contains("Join") || name.contains("WindowAggExec"),
        subquery: name == "ScalarSubqueryExec" && index > 0,
        counted: !is_memory_source(child),
        refs: vec![0; child.schema().fields().len()],
        parent: name,
        ..Shape::default()
    };
    if let Some(u) = parent.downcast_ref::<datafusion::physical_plan::unnest::UnnestExec>() {
        let mut unnested: HashMap<usize, usize> = HashMap::new();
        for l in u.list_column_indices() {
            let d = unnested.entry(l.index_in_input_schema).or_default();
            *d = (*d).max(l.depth);
        }
        for i in u.struct_column_indices() {
            unnested.entry(*i).or_insert(1);
        }
        shape.unnest = Some(unnested);
    }
    if let Some(w) = parent.downcast_ref::<WindowAggExec>() {
        let (mut fixed, mut copied) = (0usize, 0usize);
        for e in w.window_expr() {
            match e.field().map(|f| f.data_type().primitive_width()) {
                Ok(Some(width)) => fixed += width,
                _ => copied += 1,
            }
        }
        shape.window = Some((fixed, copied));
    }
    // Column indices of a single-input operator's expressions refer to that input; a join's
    // refer to either side (or their concatenation), so only its literals count.
    // A column passed on whole (a projected column, a grouping or sort key) builds nothing.
    let single = parent.children().len() == 1;
    let _ = parent.apply_expressions(&mut |e| {
        if !e.is::<Column>() {
            walk_expr(e, true, single, &mut shape);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    shape
}

/// Counts what an expression builds values from. `builds`: the parent of `e` builds a value
/// from it (not a comparison, a LIKE, an IN list: those read it and answer booleans).
fn walk_expr(e: &Arc<dyn PhysicalExpr>, builds: bool, columns: bool, shape: &mut Shape) {
    if let Some(c) = e.downcast_ref::<Column>() {
        if builds && columns && c.index() < shape.refs.len() {
            shape.refs[c.index()] += 1;
        }
        return;
    }
    if let Some(l) = e.downcast_ref::<Literal>() {
        if builds {
            shape.literal_bytes += literal_bytes(l.value());
        }
        return;
    }
    let kids = e.children();
    if kids.is_empty() {
        shape.opaque += 1;
        return;
    }
    let builds_kids = if let Some(b) = e.downcast_ref::<BinaryExpr>() {
        matches!(
            b.op(),
            Operator::StringConcat
                | Operator::Plus
                | Operator::Minus
                | Operator::Multiply
                | Operator::Divide
                | Operator::Modulo
        )
    } else {
        !(e.is::<InListExpr>() || e.is::<LikeExpr>())
    };
    for k in kids {
        walk_expr(k, builds_kids, columns, shape);
    }
}

/// Bytes of a string or binary literal's value (what broadcasting it to a row copies).
fn literal_bytes(v: &ScalarValue) -> usize {
    match v {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => s.len(),
        ScalarValue::Binary(Some(b))
        | ScalarValue::LargeBinary(Some(b))
        | ScalarValue::BinaryView(Some(b))
        | ScalarValue::FixedSizeBinary(_, Some(b)) => b.len(),
        ScalarValue::List(a) => a.get_array_memory_size(),
        ScalarValue::LargeList(a) => a.get_array_memory_size(),
        ScalarValue::FixedSizeList(a) => a.get_array_memory_size(),
        ScalarValue::Struct(a) => a.get_array_memory_size(),
        ScalarValue::Map(a) => a.get_array_memory_size(),
        _ => 0,
    }
}

/// The guard: see the module documentation.
#[derive(Debug)]
struct GuardExec {
    input: Arc<dyn ExecutionPlan>,
    shape: Arc<Shape>,
    query: Arc<QueryMemory>,
}

impl DisplayAs for GuardExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "SqlGuardExec")
    }
}

impl ExecutionPlan for GuardExec {
    fn name(&self) -> &str {
        "SqlGuardExec"
    }

    fn schema(&self) -> SchemaRef {
        self.input.schema()
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal(
                "SqlGuardExec has one input".into(),
            ));
        }
        Ok(Arc::new(GuardExec {
            input: children.swap_remove(0),
            shape: self.shape.clone(),
            query: self.query.clone(),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let reservation = self.query.reservation(&context);
        let window = self.shape.window.map(|_| reservation.new_empty());
        let input = self.input.execute(partition, context)?;
        Ok(Box::pin(GuardStream {
            schema: input.schema(),
            input,
            shape: self.shape.clone(),
            query: self.query.clone(),
            pending: VecDeque::new(),
            held: Vec::new(),
            rows: 0,
            widest: 0,
            window,
        }))
    }
}

struct GuardStream {
    schema: SchemaRef,
    input: SendableRecordBatchStream,
    shape: Arc<Shape>,
    query: Arc<QueryMemory>,
    /// Slices of the last input batch not handed up yet.
    pending: VecDeque<RecordBatch>,
    /// Keys of the buffers counted for the batches handed up and still in flight.
    held: Vec<usize>,
    /// Rows handed up so far, and the widest of them (WindowAggExec's input).
    rows: usize,
    widest: usize,
    /// The window columns WindowAggExec will add to everything it holds.
    window: Option<MemoryReservation>,
}

impl GuardStream {
    /// Checks an input batch and queues it, in slices if need be.
    fn accept(&mut self, batch: RecordBatch) -> Result<()> {
        let rows = batch.num_rows();
        if rows == 0 {
            self.pending.push_back(batch);
            return Ok(());
        }
        let q = self.query.clone();
        let shape = self.shape.clone();
        if shape.subquery {
            q.subquery_bytes
                .fetch_max(batch_bytes(&batch), Ordering::Relaxed);
        }
        if let Some(unnested) = &shape.unnest {
            // Each row becomes as many rows as its longest unnested list has elements, every
            // one a copy of the row's other columns (a row's whole expansion is built at once).
            let mut copied = vec![0usize; rows];
            let mut expansion = vec![1usize; rows];
            for (i, column) in batch.columns().iter().enumerate() {
                if let Some(depth) = unnested.get(&i) {
                    let lens: Vec<usize> = if *depth == 1 {
                        let arg = Arg {
                            array: column.clone(),
                            scalar: false,
                            widths: OnceLock::new(),
                        };
                        (0..rows).map(|r| arg.list_len(r)).collect()
                    } else {
                        row_widths(column.as_ref())
                    };
                    for (e, n) in expansion.iter_mut().zip(lens) {
                        *e = (*e).max(n);
                    }
                } else {
                    for (w, c) in copied.iter_mut().zip(row_widths(column.as_ref())) {
                        *w += c;
                    }
                }
            }
            for (row, (w, e)) in copied.iter().zip(&expansion).enumerate() {
                let out = w.saturating_mul(*e);
                if out > q.limits.batch_bytes || (*e > 1 && *w > q.row_copy_bytes) {
                    return Err(refuse(format!(
                        "UNNEST would copy row {row}'s other columns ({w} bytes) into {e} rows, {out} bytes; a row's copies may hold at most {} bytes, and a copied row at most {} bytes",
                        q.limits.batch_bytes, q.row_copy_bytes
                    )));
                }
            }
        } else if shape.copies_rows {
            let bytes = batch_bytes(&batch);
            let needs_widths =
                bytes > q.row_copy_bytes || shape.window.is_some_and(|(_, copied)| copied > 0);
            let widest = if needs_widths {
                let mut widths = vec![0usize; rows];
                for column in batch.columns() {
                    for (w, c) in widths.iter_mut().zip(row_widths(column.as_ref())) {
                        *w += c;
                    }
                }
                widths.into_iter().max().unwrap_or(0)
            } else {
                bytes
            };
            if widest > q.row_copy_bytes {
                return Err(refuse(format!(
                    "a row of {} reaches {}, which copies each row into many output rows; rows wider than {} cannot be joined, unnested or windowed (aggregate or drop the wide values first)",
                    bytes_text(widest),
                    shape.parent,
                    bytes_text(q.row_copy_bytes)
                )));
            }
            self.widest = self.widest.max(widest);
        }
        self.split(batch)?;
        if let (Some(window), Some((fixed, copied))) = (&self.window, shape.window) {
            self.rows += rows;
            let per_row =
                fixed + copied.saturating_mul(self.widest.saturating_add(shape.literal_bytes));
            window.try_resize(self.rows.saturating_mul(per_row))?;
        }
        Ok(())
    }

    /// Queues `batch` in slices of at most a batch's rows, each small enough that what the
    /// consuming operator builds from it stays within the batch budget.
    fn split(&mut self, batch: RecordBatch) -> Result<()> {
        let rows = batch.num_rows();
        let limit = self.query.batch_rows;
        if rows > limit {
            let mut offset = 0;
            while offset < rows {
                let n = limit.min(rows - offset);
                self.split(batch.slice(offset, n))?;
                offset += n;
            }
            return Ok(());
        }
        let (bytes, builds) = self.estimate(&batch);
        let budget = self.query.limits.batch_bytes;
        if rows > 1 && builds > budget {
            let half = rows / 2;
            self.split(batch.slice(0, half))?;
            return self.split(batch.slice(half, rows - half));
        }
        if bytes > budget {
            return Err(refuse(format!(
                "{} {bytes} bytes on its way to {}; one batch may hold at most {} ({budget} bytes), so a value this large cannot be built or used here",
                if rows == 1 {
                    "one row holds"
                } else {
                    "a batch holds"
                },
                self.shape.parent,
                bytes_text(budget)
            )));
        }
        self.pending.push_back(batch);
        Ok(())
    }

    /// Bytes of `batch`, and what the consuming operator may build from it.
    fn estimate(&self, batch: &RecordBatch) -> (usize, usize) {
        let shape = &self.shape;
        let mut bytes = 0usize;
        let mut read = 0usize;
        for (i, column) in batch.columns().iter().enumerate() {
            let b = array_bytes(column.as_ref());
            bytes = bytes.saturating_add(b);
            read = read.saturating_add(b.saturating_mul(shape.refs.get(i).copied().unwrap_or(0)));
        }
        let per_row = shape.literal_bytes.saturating_add(
            shape
                .opaque
                .saturating_mul(self.query.subquery_bytes.load(Ordering::Relaxed)),
        );
        let builds = bytes.saturating_add(
            GROWTH.saturating_mul(read.saturating_add(per_row.saturating_mul(batch.num_rows()))),
        );
        (bytes, builds)
    }

    /// Counts `batch` (and, unless the batches are kept, stops counting the one before).
    fn hand_up(&mut self, batch: &RecordBatch) -> Result<()> {
        let keys = self.query.hold(batch, self.shape.counted)?;
        if self.shape.keep || self.window.is_some() {
            self.held.extend(keys);
        } else {
            let old = std::mem::replace(&mut self.held, keys);
            self.query.release(&old);
        }
        Ok(())
    }
}

/// Bytes a batch's arrays cover (a slice: only its part of the buffers).
fn batch_bytes(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|c| array_bytes(c.as_ref()))
        .fold(0usize, usize::saturating_add)
}

fn array_bytes(a: &dyn Array) -> usize {
    a.to_data()
        .get_slice_memory_size()
        .unwrap_or_else(|_| a.get_array_memory_size())
}

impl Stream for GuardStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.query.cancel.load(Ordering::Relaxed) {
            self.pending.clear();
            return Poll::Ready(Some(Err(cancelled())));
        }
        loop {
            if let Some(batch) = self.pending.pop_front() {
                if let Err(e) = self.hand_up(&batch) {
                    self.pending.clear();
                    return Poll::Ready(Some(Err(e)));
                }
                return Poll::Ready(Some(Ok(batch)));
            }
            match self.input.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(batch))) => {
                    if let Err(e) = self.accept(batch) {
                        self.pending.clear();
                        return Poll::Ready(Some(Err(e)));
                    }
                }
                Poll::Ready(None) => {
                    if !(self.shape.keep || self.window.is_some()) {
                        let old = std::mem::take(&mut self.held);
                        self.query.release(&old);
                    }
                    return Poll::Ready(None);
                }
                other => return other,
            }
        }
    }
}

impl RecordBatchStream for GuardStream {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

impl Drop for GuardStream {
    fn drop(&mut self) {
        let held = std::mem::take(&mut self.held);
        self.query.release(&held);
    }
}

// ----------------------------------------------------------------------------------------
// Sizes of rows
// ----------------------------------------------------------------------------------------

/// Approximate bytes of each row of `array`: a value's bytes with the offset, view or slot
/// that holds it, at least one byte per value (so a list's width also bounds its elements).
pub(crate) fn row_widths(array: &dyn Array) -> Vec<usize> {
    let len = array.len();
    match array.data_type() {
        DataType::Utf8 => offsets_widths(array.as_string::<i32>().value_offsets(), 4),
        DataType::LargeUtf8 => offsets_widths(array.as_string::<i64>().value_offsets(), 8),
        DataType::Binary => offsets_widths(array.as_binary::<i32>().value_offsets(), 4),
        DataType::LargeBinary => offsets_widths(array.as_binary::<i64>().value_offsets(), 8),
        DataType::Utf8View => views_widths(array.as_string_view().views()),
        DataType::BinaryView => views_widths(array.as_binary_view().views()),
        DataType::List(_) => {
            let l = array.as_list::<i32>();
            nested_widths(l.value_offsets(), l.values().as_ref(), 4)
        }
        DataType::LargeList(_) => {
            let l = array.as_list::<i64>();
            nested_widths(l.value_offsets(), l.values().as_ref(), 8)
        }
        DataType::Map(..) => {
            let m = array.as_map();
            let entries: ArrayRef = Arc::new(m.entries().clone());
            nested_widths(m.value_offsets(), entries.as_ref(), 4)
        }
        DataType::FixedSizeList(_, n) => {
            let l = array.as_fixed_size_list();
            let child = row_widths(l.values().as_ref());
            let n = (*n).max(0) as usize;
            (0..len)
                .map(|i| {
                    let start = l.value_offset(i) as usize;
                    child
                        .get(start..(start + n).min(child.len()))
                        .map_or(1, |s| s.iter().sum::<usize>().max(1))
                })
                .collect()
        }
        DataType::Struct(_) => {
            let s = array.as_struct();
            let mut widths = vec![1usize; len];
            for column in s.columns() {
                for (w, c) in widths.iter_mut().zip(row_widths(column.as_ref())) {
                    *w += c;
                }
            }
            widths
        }
        DataType::Dictionary(..) => {
            let d = array.as_any_dictionary();
            let values = row_widths(d.values().as_ref());
            d.normalized_keys()
                .into_iter()
                .map(|k| values.get(k).copied().unwrap_or(1) + 4)
                .collect()
        }
        DataType::FixedSizeBinary(n) => vec![(*n).max(1) as usize; len],
        DataType::Null | DataType::Boolean => vec![1; len],
        other => match other.primitive_width() {
            Some(w) => vec![w.max(1); len],
            None => vec![(array_bytes(array) / len.max(1)).max(1); len],
        },
    }
}

fn offsets_widths<O: datafusion::arrow::array::OffsetSizeTrait>(
    offsets: &[O],
    slot: usize,
) -> Vec<usize> {
    offsets
        .windows(2)
        .map(|w| (w[1] - w[0]).as_usize() + slot)
        .collect()
}

fn views_widths(views: &[u128]) -> Vec<usize> {
    views
        .iter()
        .map(|v| {
            let len = *v as u32 as usize;
            16 + if len > 12 { len } else { 0 }
        })
        .collect()
}

fn nested_widths<O: datafusion::arrow::array::OffsetSizeTrait>(
    offsets: &[O],
    values: &dyn Array,
    slot: usize,
) -> Vec<usize> {
    let child = row_widths(values);
    let mut prefix = Vec::with_capacity(child.len() + 1);
    prefix.push(0usize);
    for w in &child {
        prefix.push(prefix.last().copied().unwrap_or(0).saturating_add(*w));
    }
    offsets
        .windows(2)
        .map(|w| {
            let (a, b) = (w[0].as_usize(), w[1].as_usize());
            let (a, b) = (a.min(child.len()), b.min(child.len()));
            prefix[b] - prefix[a] + slot
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_ranges_are_counted_like_the_engine() {
        assert_eq!(int_range_len(0, 3, 1, false), 3);
        assert_eq!(int_range_len(1, 3, 1, true), 3);
        assert_eq!(int_range_len(1, 7, 2, false), 3);
        assert_eq!(int_range_len(5, 1, -2, true), 3);
        assert_eq!(int_range_len(1, 1, 1, false), 0);
        assert_eq!(int_range_len(1, 2_000_000_000, 1, true), 2_000_000_000);
        assert_eq!(int_range_len(i64::MIN, i64::MAX, 1, true), usize::MAX);
    }

    #[test]
    fn row_widths_follow_values() {
        let s: ArrayRef = Arc::new(datafusion::arrow::array::StringArray::from(vec![
            Some("abc"),
            None,
            Some(""),
        ]));
        assert_eq!(row_widths(s.as_ref()), vec![7, 4, 4]);
        let sliced = s.slice(1, 2);
        assert_eq!(row_widths(sliced.as_ref()), vec![4, 4]);
    }
}
