//! Limit periods and the windows they cut time into.
//!
//! A limit such as "1000 calls per month" is only fair to the customer if "month" means
//! *their* month: it follows their wall clock (IANA timezone) and their billing cycle, not
//! UTC and not the calendar month. This module turns `(period, timezone, billing anchor,
//! instant)` into the half-open UTC interval `[start, end)` whose counter the instant is
//! charged to. `end` is also the reset time shown to the customer.
//!
//! Everything here is pure: instants come in as parameters, nothing reads a clock.
//!
//! # How wall-clock rules become instants
//!
//! Calendar periods (`day`, `week`, `month`, `annual`) start at a local midnight. A local
//! time may not exist (DST gap) or may happen twice (DST overlap); [`resolve_local`] picks
//! the first instant after the gap, respectively the earlier of the two instants. That
//! resolution is monotonic in the local time, so the resulting boundaries are ordered and
//! windows built from consecutive boundaries never overlap.
//!
//! Clock periods (`minute`, `hour`) start at every instant at which the wall clock reads
//! `:00` (seconds, respectively minutes and seconds), plus the first instant after a gap
//! that skipped such a reading. During an overlap the repeated local hour therefore gives
//! two distinct one-hour windows rather than one two-hour window, and in zones with
//! 30- or 45-minute offsets (Asia/Kolkata, Asia/Kathmandu) the windows start at `:30` or
//! `:15` UTC, as a customer looking at their clock would expect.

use chrono::{
    DateTime, Datelike, FixedOffset, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, Offset,
    TimeZone, Utc,
};
use chrono_tz::{GapInfo, Tz};

/// How long a limit's counter accumulates before it starts again from zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Period {
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Annual,
    AllTime,
}

impl Period {
    /// Every period, shortest first, so callers can iterate without keeping their own list
    /// in sync with the enum.
    pub const ALL: [Period; 7] = [
        Period::Minute,
        Period::Hour,
        Period::Day,
        Period::Week,
        Period::Month,
        Period::Annual,
        Period::AllTime,
    ];

    /// The wire and storage name; stable, because it ends up in API payloads and keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Minute => "minute",
            Period::Hour => "hour",
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
            Period::Annual => "annual",
            Period::AllTime => "all_time",
        }
    }

    /// Inverse of [`Period::as_str`]. Exact match only: a lenient parser would let two
    /// spellings of one limit coexist in stored configuration.
    pub fn parse(s: &str) -> Option<Period> {
        Period::ALL.into_iter().find(|period| period.as_str() == s)
    }
}

/// Day (and month, for `annual`) of the customer's billing cycle start, in the customer's
/// timezone.
///
/// Only the calendar position is kept, not the instant: the cycle repeats on that local
/// date every month or year even when the zone's UTC offset has changed since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BillingAnchor {
    month: u32,
    day: u32,
}

impl BillingAnchor {
    /// Rejects dates that never occur. Feb 29 is accepted because a cycle that began on a
    /// leap day is real; in common years it falls back to Feb 28.
    pub fn new(month: u32, day: u32) -> Option<BillingAnchor> {
        // 2000 is a leap year, so this accepts Feb 29 and rejects Feb 30.
        let longest = days_in_month(2000, month)?;
        if (1..=longest).contains(&day) {
            Some(BillingAnchor { month, day })
        } else {
            None
        }
    }

    /// The anchor a customer gets when their cycle starts at `at`: the *local* date matters,
    /// because a cycle started late on the 31st in New York is a 31st anchor even though it
    /// is already the 1st in UTC.
    pub fn from_instant(at: DateTime<Utc>, tz: Tz) -> BillingAnchor {
        // Falling back to the UTC date only matters at the very ends of chrono's range,
        // where the local date cannot be represented.
        let date = local_datetime(tz, at).unwrap_or(at.naive_utc()).date();
        BillingAnchor {
            month: date.month(),
            day: date.day(),
        }
    }

    pub fn month(self) -> u32 {
        self.month
    }

    pub fn day(self) -> u32 {
        self.day
    }
}

/// A half-open interval `[start, end)` of UTC instants that share one usage counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Window {
    /// When the counter of this window may be dropped: end plus one full period
    /// (`end + (end - start)`).
    ///
    /// Keeping the counter one period past its end lets late or retried events still be
    /// charged and lets "previous period" usage be reported, without keeping counters
    /// forever. Saturates instead of panicking at the end of chrono's range.
    pub fn retain_until(&self) -> DateTime<Utc> {
        self.end
            .checked_add_signed(self.end - self.start)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

/// The window of `period` that contains `at`; `None` for [`Period::AllTime`], which never
/// resets.
///
/// Also `None` when `at` is so close to the ends of chrono's representable range that a
/// boundary of its window cannot be represented; no real usage event gets there.
pub fn window_containing(
    period: Period,
    tz: Tz,
    anchor: BillingAnchor,
    at: DateTime<Utc>,
) -> Option<Window> {
    match period {
        Period::Minute => clock_window(tz, at, 60),
        Period::Hour => clock_window(tz, at, 3600),
        Period::Day => calendar_window(Calendar::Day, tz, at),
        Period::Week => calendar_window(Calendar::Week, tz, at),
        Period::Month => calendar_window(Calendar::Month { day: anchor.day }, tz, at),
        Period::Annual => calendar_window(
            Calendar::Annual {
                month: anchor.month,
                day: anchor.day,
            },
            tz,
            at,
        ),
        Period::AllTime => None,
    }
}

/// Resolve a local wall-clock time to an instant: a time skipped by a DST gap resolves to
/// the first instant after the gap, an ambiguous time to the earlier of its two instants.
///
/// Both choices make the result the first instant at which the wall clock reads `local` or
/// later. That keeps resolution monotonic, which is what makes calendar windows contiguous
/// and non-overlapping, and it never lets a window start after the local time it is named
/// for has already begun.
pub fn resolve_local(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(at) => at.with_timezone(&Utc),
        LocalResult::Ambiguous(first, second) => first.min(second).with_timezone(&Utc),
        LocalResult::None => first_instant_reading_at_least(tz, local),
    }
}

/// First instant at which the wall clock in `tz` reads `local` or later; used when `local`
/// itself never appears on that clock.
///
/// chrono-tz's [`GapInfo`] knows the transition directly. The search below only runs when
/// it gives up (it also reports `None` for times that do not exist merely because they are
/// out of chrono's range), so that this function always has an answer.
fn first_instant_reading_at_least(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    if let Some(end) = GapInfo::new(&local, &tz).and_then(|gap| gap.end) {
        return end.with_timezone(&Utc);
    }

    // Every transition happens on a whole second, so the wall clock reads `local` or later
    // from the first whole second whose reading is at least `local` rounded up to a second.
    let target = local.and_utc();
    let target_secs = target.timestamp() + i64::from(target.timestamp_subsec_nanos() > 0);

    // UTC offsets stay within +-16 hours (the extremes are 19th-century local mean times),
    // so the answer lies within a day and a half of `local` read as UTC. Gaps are shorter
    // than that too: the longest, Samoa skipping 2011-12-30, is 24 hours.
    const SEARCH_SPAN: i64 = 36 * 3600;
    let (min_secs, max_secs) = representable_secs();
    let mut before = target_secs.saturating_sub(SEARCH_SPAN).max(min_secs);
    let mut after = target_secs.saturating_add(SEARCH_SPAN).min(max_secs);
    while after - before > 1 {
        let mid = before + (after - before) / 2;
        let reads_at_least = match offset_secs(tz, mid) {
            Some(offset) => mid + offset >= target_secs,
            None => mid > 0,
        };
        if reads_at_least {
            after = mid;
        } else {
            before = mid;
        }
    }
    instant(after).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

// ---------------------------------------------------------------------------------------
// Calendar periods: day, week, month, annual.
// ---------------------------------------------------------------------------------------

/// The local-midnight grid of a calendar period. Grid points are numbered by an `i64`
/// index so that "previous" and "next" are plain `- 1` / `+ 1`, whatever the period.
#[derive(Debug, Clone, Copy)]
enum Calendar {
    /// Index: days since 0001-01-01 (chrono's `num_days_from_ce`, which is 1 on that day).
    Day,
    /// Index: ISO weeks since the week of 0001-01-01, which is a Monday.
    Week,
    /// Index: `year * 12 + month0`; the window starts on the anchor day of that month.
    Month { day: u32 },
    /// Index: the year; the window starts on the anchor date of that year.
    Annual { month: u32, day: u32 },
}

impl Calendar {
    /// Index of the last grid point whose local date is `date` or earlier.
    fn index_on_or_before(self, date: NaiveDate) -> i64 {
        match self {
            Calendar::Day => i64::from(date.num_days_from_ce()),
            Calendar::Week => (i64::from(date.num_days_from_ce()) - 1).div_euclid(7),
            Calendar::Month { day } => {
                let index = i64::from(date.year()) * 12 + i64::from(date.month0());
                if date.day() >= clamp_day(date.year(), date.month(), day) {
                    index
                } else {
                    index - 1
                }
            }
            Calendar::Annual { month, day } => {
                let year = date.year();
                let anchor_this_year = (month, clamp_day(year, month, day));
                if (date.month(), date.day()) >= anchor_this_year {
                    i64::from(year)
                } else {
                    i64::from(year) - 1
                }
            }
        }
    }

    /// Local date of grid point `index`. Month-end anchors are clamped to the month's last
    /// day (anchor 31 gives Feb 28/29, then Mar 31 again) so every month has exactly one
    /// reset and no cycle gets longer than necessary.
    fn date(self, index: i64) -> Option<NaiveDate> {
        match self {
            Calendar::Day => NaiveDate::from_num_days_from_ce_opt(i32::try_from(index).ok()?),
            Calendar::Week => {
                let days = index.checked_mul(7)?.checked_add(1)?;
                NaiveDate::from_num_days_from_ce_opt(i32::try_from(days).ok()?)
            }
            Calendar::Month { day } => {
                let year = i32::try_from(index.div_euclid(12)).ok()?;
                let month = u32::try_from(index.rem_euclid(12)).ok()? + 1;
                NaiveDate::from_ymd_opt(year, month, clamp_day(year, month, day))
            }
            Calendar::Annual { month, day } => {
                let year = i32::try_from(index).ok()?;
                NaiveDate::from_ymd_opt(year, month, clamp_day(year, month, day))
            }
        }
    }

    /// The instant grid point `index` begins: local midnight of its date.
    fn boundary(self, tz: Tz, index: i64) -> Option<DateTime<Utc>> {
        let date = self.date(index)?;
        Some(resolve_local(tz, date.and_time(NaiveTime::MIN)))
    }
}

/// Window of a calendar period containing `at`.
///
/// Starting from the grid point of `at`'s local date is right almost always, but not
/// always: when a DST overlap crosses midnight (America/St_Johns and America/Moncton fell
/// back from 00:01 to 23:01 until 2010), the repeated 23:xx of day D comes after the
/// (earlier) midnight that starts day D+1, so those instants belong to D+1's window. The
/// two loops walk the grid until `start <= at < end` holds; because resolution is
/// monotonic, that pair is unique, which is what makes windows contiguous.
fn calendar_window(calendar: Calendar, tz: Tz, at: DateTime<Utc>) -> Option<Window> {
    let local_date = local_datetime(tz, at)?.date();
    let mut index = calendar.index_on_or_before(local_date);
    let mut start = calendar.boundary(tz, index)?;
    while start > at {
        index -= 1;
        start = calendar.boundary(tz, index)?;
    }
    let mut end = calendar.boundary(tz, index + 1)?;
    while end <= at {
        index += 1;
        start = end;
        end = calendar.boundary(tz, index + 1)?;
    }
    Some(Window { start, end })
}

/// Number of days in `month` of `year`; `None` for a month outside 1..=12.
fn days_in_month(year: i32, month: u32) -> Option<u32> {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => Some(31),
        4 | 6 | 9 | 11 => Some(30),
        2 if is_leap_year(year) => Some(29),
        2 => Some(28),
        _ => None,
    }
}

fn is_leap_year(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

/// The anchor day as it falls in a given month: the 29th-31st become the month's last day
/// when the month is shorter.
fn clamp_day(year: i32, month: u32, day: u32) -> u32 {
    days_in_month(year, month).map_or(day, |last| day.min(last))
}

// ---------------------------------------------------------------------------------------
// Clock periods: minute, hour.
//
// Worked in whole UTC seconds: every offset and every transition in the tz database is a
// whole number of seconds, so every boundary is too.
// ---------------------------------------------------------------------------------------

/// Window of a clock period (`unit` seconds: 60 or 3600) containing `at`.
///
/// Boundaries are whole seconds, so "boundary <= at" and "boundary > at" give the same
/// answers for `at` and for `at` truncated to its second.
fn clock_window(tz: Tz, at: DateTime<Utc>, unit: i64) -> Option<Window> {
    let secs = at.timestamp();
    let start = clock_boundary_at_or_before(tz, secs, unit)?;
    let end = clock_boundary_after(tz, secs, unit)?;
    Some(Window {
        start: instant(start)?,
        end: instant(end)?,
    })
}

/// Latest clock boundary at or before `secs`.
///
/// Under the offset in force at `secs`, the wall clock last read `:00` at `mark`. If the
/// offset was the same at `mark`, nothing happened in between and `mark` is the answer:
/// offset changes in the tz database are always almost a week apart (the closest pair is 6
/// days 23 hours), so a change and its reversal never both fit inside one hour. Otherwise the clock was shifted after
/// `mark`; the shift itself is the boundary if it skipped a `:00`, else the answer lies
/// before the shift.
fn clock_boundary_at_or_before(tz: Tz, secs: i64, unit: i64) -> Option<i64> {
    let mut secs = secs;
    loop {
        let offset = offset_secs(tz, secs)?;
        let mark = secs - (secs + offset).rem_euclid(unit);
        if offset_secs(tz, mark)? == offset {
            return Some(mark);
        }
        let shift = first_change_after(tz, mark, secs)?;
        if is_clock_boundary(tz, shift, unit)? {
            return Some(shift);
        }
        secs = shift - 1;
    }
}

/// Earliest clock boundary strictly after `secs`; the mirror image of
/// [`clock_boundary_at_or_before`].
fn clock_boundary_after(tz: Tz, secs: i64, unit: i64) -> Option<i64> {
    let mut secs = secs;
    loop {
        let offset = offset_secs(tz, secs)?;
        let mark = secs - (secs + offset).rem_euclid(unit) + unit;
        if offset_secs(tz, mark)? == offset {
            return Some(mark);
        }
        let shift = first_change_after(tz, secs, mark)?;
        if is_clock_boundary(tz, shift, unit)? {
            return Some(shift);
        }
        secs = shift;
    }
}

/// Whether a window of `unit` starts at `secs`: the wall clock reads a whole `unit` there,
/// or the clock was just moved forward over a whole `unit` (the skipped `:00` starts at the
/// first instant after the gap, as for every nonexistent local time).
fn is_clock_boundary(tz: Tz, secs: i64, unit: i64) -> Option<bool> {
    let offset = offset_secs(tz, secs)?;
    let reading = secs + offset;
    if reading.rem_euclid(unit) == 0 {
        return Some(true);
    }
    let reading_before = secs + offset_secs(tz, secs - 1)?;
    if reading_before >= reading {
        return Some(false);
    }
    // Readings in [reading_before, reading) were skipped; is a whole unit among them?
    let first_whole_unit = reading_before + (-reading_before).rem_euclid(unit);
    Some(first_whole_unit < reading)
}

/// The instant in `(from, to]` at which the offset in force at `from` stopped applying.
/// The caller knows the offsets at `from` and `to` differ; with at most one change in the
/// interval, bisection finds it exactly.
fn first_change_after(tz: Tz, from: i64, to: i64) -> Option<i64> {
    let offset = offset_secs(tz, from)?;
    let (mut unchanged, mut changed) = (from, to);
    while changed - unchanged > 1 {
        let mid = unchanged + (changed - unchanged) / 2;
        if offset_secs(tz, mid)? == offset {
            unchanged = mid;
        } else {
            changed = mid;
        }
    }
    Some(changed)
}

// ---------------------------------------------------------------------------------------
// Small conversions that report out-of-range values instead of panicking.
// ---------------------------------------------------------------------------------------

/// Total UTC offset (standard plus DST) in force at the whole second `secs`.
fn offset_secs(tz: Tz, secs: i64) -> Option<i64> {
    let utc = instant(secs)?.naive_utc();
    let offset: FixedOffset = tz.offset_from_utc_datetime(&utc).fix();
    Some(i64::from(offset.local_minus_utc()))
}

/// Wall-clock reading in `tz` at `at`. chrono's own conversion panics when the reading
/// falls outside its range; this reports `None` instead.
fn local_datetime(tz: Tz, at: DateTime<Utc>) -> Option<NaiveDateTime> {
    let utc = at.naive_utc();
    utc.checked_add_offset(tz.offset_from_utc_datetime(&utc).fix())
}

fn instant(secs: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(secs, 0)
}

/// Whole seconds that chrono can turn into a `DateTime<Utc>`.
fn representable_secs() -> (i64, i64) {
    (
        DateTime::<Utc>::MIN_UTC.timestamp(),
        DateTime::<Utc>::MAX_UTC.timestamp(),
    )
}
