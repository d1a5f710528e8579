//! The statistics of `Observation/$stats` (R4 code system
//! `http://terminology.hl7.org/CodeSystem/observation-statistics`), as pure functions over
//! the measured values.
//!
//! The definitions the R4 code system leaves open are fixed here, as most statistics
//! packages (R's defaults, Excel's `*.S` and `PERCENTILE.INC`) do:
//! - `variance` and `std-dev` are the sample statistics (divided by n − 1; 2 values at least);
//! - percentiles, quartiles and quintiles interpolate linearly between the closest ranks
//!   (Hyndman–Fan type 7): the p-th percentile of sorted x₀…xₙ₋₁ is at rank h = (n − 1)·p;
//!   `median` is the 50th percentile, `4-lower`/`4-upper` the 25th/75th, `5-1`…`5-4` the
//!   20th/40th/60th/80th;
//! - `4-dev` is the quartile deviation (semi-interquartile range), (Q3 − Q1) / 2;
//! - `skew` is the adjusted Fisher–Pearson coefficient G1 (3 values at least), `kurtosis`
//!   the sample excess kurtosis G2 (4 values at least; 0 for a normal distribution);
//! - `regression` is the least-squares line of the values over time: its gradient per hour
//!   and its intercept at a reference time chosen by the caller.
//!
//! A statistic that is undefined for the values (too few of them, all equal) is
//! [`Outcome::Undefined`] with the reason, never NaN or infinity.

/// The code system of the statistic codes.
pub const SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/observation-statistics";

/// One statistic code of the R4 `observation-statistics` code system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Statistic {
    Average,
    Maximum,
    Minimum,
    Count,
    TotalCount,
    Median,
    StdDev,
    Sum,
    Variance,
    Percent20,
    Percent80,
    QuartileLower,
    QuartileUpper,
    QuartileDeviation,
    Quintile1,
    Quintile2,
    Quintile3,
    Quintile4,
    Skew,
    Kurtosis,
    Regression,
}

impl Statistic {
    /// Every statistic, in the order of the code system.
    pub const ALL: [Statistic; 21] = [
        Statistic::Average,
        Statistic::Maximum,
        Statistic::Minimum,
        Statistic::Count,
        Statistic::TotalCount,
        Statistic::Median,
        Statistic::StdDev,
        Statistic::Sum,
        Statistic::Variance,
        Statistic::Percent20,
        Statistic::Percent80,
        Statistic::QuartileLower,
        Statistic::QuartileUpper,
        Statistic::QuartileDeviation,
        Statistic::Quintile1,
        Statistic::Quintile2,
        Statistic::Quintile3,
        Statistic::Quintile4,
        Statistic::Skew,
        Statistic::Kurtosis,
        Statistic::Regression,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Statistic::Average => "average",
            Statistic::Maximum => "maximum",
            Statistic::Minimum => "minimum",
            Statistic::Count => "count",
            Statistic::TotalCount => "total-count",
            Statistic::Median => "median",
            Statistic::StdDev => "std-dev",
            Statistic::Sum => "sum",
            Statistic::Variance => "variance",
            Statistic::Percent20 => "20-percent",
            Statistic::Percent80 => "80-percent",
            Statistic::QuartileLower => "4-lower",
            Statistic::QuartileUpper => "4-upper",
            Statistic::QuartileDeviation => "4-dev",
            Statistic::Quintile1 => "5-1",
            Statistic::Quintile2 => "5-2",
            Statistic::Quintile3 => "5-3",
            Statistic::Quintile4 => "5-4",
            Statistic::Skew => "skew",
            Statistic::Kurtosis => "kurtosis",
            Statistic::Regression => "regression",
        }
    }

    /// The display of the code system.
    pub fn display(self) -> &'static str {
        match self {
            Statistic::Average => "Average",
            Statistic::Maximum => "Maximum",
            Statistic::Minimum => "Minimum",
            Statistic::Count => "Count",
            Statistic::TotalCount => "Total Count",
            Statistic::Median => "Median",
            Statistic::StdDev => "Standard Deviation",
            Statistic::Sum => "Sum",
            Statistic::Variance => "Variance",
            Statistic::Percent20 => "20th Percentile",
            Statistic::Percent80 => "80th Percentile",
            Statistic::QuartileLower => "Lower Quartile",
            Statistic::QuartileUpper => "Upper Quartile",
            Statistic::QuartileDeviation => "Quartile Deviation",
            Statistic::Quintile1 => "1st Quintile",
            Statistic::Quintile2 => "2nd Quintile",
            Statistic::Quintile3 => "3rd Quintile",
            Statistic::Quintile4 => "4th Quintile",
            Statistic::Skew => "Skew",
            Statistic::Kurtosis => "Kurtosis",
            Statistic::Regression => "Regression",
        }
    }

    /// The statistic for a code. Besides the official codes, `max` and `min` (used in the
    /// R4 OperationDefinition's own documentation) and `totalcount` are understood.
    pub fn parse(code: &str) -> Option<Statistic> {
        let code = match code {
            "max" => "maximum",
            "min" => "minimum",
            "totalcount" => "total-count",
            other => other,
        };
        Statistic::ALL.into_iter().find(|s| s.code() == code)
    }

    /// The official codes, comma-separated (for error messages).
    pub fn codes() -> String {
        Statistic::ALL
            .iter()
            .map(|s| s.code())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// True when the result has the unit of the values (as opposed to a count, a squared
    /// unit, a pure number or a line).
    pub fn in_value_unit(self) -> bool {
        !matches!(
            self,
            Statistic::Count
                | Statistic::TotalCount
                | Statistic::Variance
                | Statistic::Skew
                | Statistic::Kurtosis
                | Statistic::Regression
        )
    }
}

/// A value measured at a time (hours from a reference time, for `regression`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub hours: f64,
    pub value: f64,
}

/// The result of one statistic.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Number(f64),
    Count(usize),
    /// `regression`: value = intercept + gradient · hours.
    Line {
        gradient: f64,
        intercept: f64,
    },
    Undefined(String),
}

/// The values a set of statistics is computed from.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Finite values, sorted ascending.
    sorted: Vec<f64>,
    /// The values with a known time.
    points: Vec<Point>,
    /// Measurements including those without a usable value (`total-count`).
    total: usize,
}

impl Sample {
    /// `values` are the usable values; `points` those of them whose time is known;
    /// `total` counts every measurement, usable or not. Non-finite values are dropped.
    pub fn new(values: &[f64], points: &[Point], total: usize) -> Sample {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        let points = points
            .iter()
            .copied()
            .filter(|p| p.hours.is_finite() && p.value.is_finite())
            .collect();
        Sample {
            sorted,
            points,
            total: total.max(values.len()),
        }
    }

    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    pub fn compute(&self, statistic: Statistic) -> Outcome {
        let n = self.sorted.len();
        match statistic {
            Statistic::Count => return Outcome::Count(n),
            Statistic::TotalCount => return Outcome::Count(self.total),
            Statistic::Regression => return self.regression(),
            _ => {}
        }
        if n == 0 {
            return Outcome::Undefined("there are no values".into());
        }
        let result = match statistic {
            Statistic::Average => Some(self.mean()),
            Statistic::Maximum => self.sorted.last().copied(),
            Statistic::Minimum => self.sorted.first().copied(),
            Statistic::Sum => Some(self.sorted.iter().sum()),
            Statistic::Median => self.percentile(0.5),
            Statistic::Percent20 | Statistic::Quintile1 => self.percentile(0.2),
            Statistic::Quintile2 => self.percentile(0.4),
            Statistic::Quintile3 => self.percentile(0.6),
            Statistic::Percent80 | Statistic::Quintile4 => self.percentile(0.8),
            Statistic::QuartileLower => self.percentile(0.25),
            Statistic::QuartileUpper => self.percentile(0.75),
            Statistic::QuartileDeviation => match (self.percentile(0.25), self.percentile(0.75)) {
                (Some(q1), Some(q3)) => Some((q3 - q1) / 2.0),
                _ => None,
            },
            Statistic::Variance | Statistic::StdDev => {
                if n < 2 {
                    return Outcome::Undefined(
                        "the sample variance needs at least 2 values".into(),
                    );
                }
                let variance = self.central_moment_sum(2) / (n as f64 - 1.0);
                Some(if statistic == Statistic::Variance {
                    variance
                } else {
                    variance.sqrt()
                })
            }
            Statistic::Skew => return self.skew(),
            Statistic::Kurtosis => return self.kurtosis(),
            Statistic::Count | Statistic::TotalCount | Statistic::Regression => None,
        };
        finite(result)
    }

    fn mean(&self) -> f64 {
        self.sorted.iter().sum::<f64>() / self.sorted.len() as f64
    }

    /// Σ (x − mean)^k.
    fn central_moment_sum(&self, k: i32) -> f64 {
        let mean = self.mean();
        self.sorted.iter().map(|x| (x - mean).powi(k)).sum()
    }

    /// Linear interpolation between closest ranks (type 7).
    fn percentile(&self, p: f64) -> Option<f64> {
        let n = self.sorted.len();
        if n == 0 {
            return None;
        }
        let h = (n - 1) as f64 * p;
        let below = h.floor() as usize;
        let above = (below + 1).min(n - 1);
        let fraction = h - below as f64;
        let low = *self.sorted.get(below)?;
        let high = *self.sorted.get(above)?;
        Some(low + fraction * (high - low))
    }

    fn skew(&self) -> Outcome {
        let n = self.sorted.len() as f64;
        if self.sorted.len() < 3 {
            return Outcome::Undefined("the skew needs at least 3 values".into());
        }
        let s2 = self.central_moment_sum(2) / (n - 1.0);
        if s2 <= 0.0 {
            return Outcome::Undefined("the skew is undefined when all values are equal".into());
        }
        let g1 = n / ((n - 1.0) * (n - 2.0)) * self.central_moment_sum(3) / s2.powf(1.5);
        finite(Some(g1))
    }

    fn kurtosis(&self) -> Outcome {
        let n = self.sorted.len() as f64;
        if self.sorted.len() < 4 {
            return Outcome::Undefined("the kurtosis needs at least 4 values".into());
        }
        let s2 = self.central_moment_sum(2) / (n - 1.0);
        if s2 <= 0.0 {
            return Outcome::Undefined(
                "the kurtosis is undefined when all values are equal".into(),
            );
        }
        let g2 = n * (n + 1.0) / ((n - 1.0) * (n - 2.0) * (n - 3.0)) * self.central_moment_sum(4)
            / (s2 * s2)
            - 3.0 * (n - 1.0) * (n - 1.0) / ((n - 2.0) * (n - 3.0));
        finite(Some(g2))
    }

    fn regression(&self) -> Outcome {
        let n = self.points.len() as f64;
        if self.points.len() < 2 {
            return Outcome::Undefined(
                "the regression needs at least 2 values with an effective time".into(),
            );
        }
        let mean_x = self.points.iter().map(|p| p.hours).sum::<f64>() / n;
        let mean_y = self.points.iter().map(|p| p.value).sum::<f64>() / n;
        let sxx: f64 = self.points.iter().map(|p| (p.hours - mean_x).powi(2)).sum();
        let sxy: f64 = self
            .points
            .iter()
            .map(|p| (p.hours - mean_x) * (p.value - mean_y))
            .sum();
        if sxx <= 0.0 {
            return Outcome::Undefined(
                "the regression needs values at 2 different times at least".into(),
            );
        }
        let gradient = sxy / sxx;
        let intercept = mean_y - gradient * mean_x;
        if gradient.is_finite() && intercept.is_finite() {
            Outcome::Line {
                gradient: tidy(gradient),
                intercept: tidy(intercept),
            }
        } else {
            Outcome::Undefined("the regression overflows for these values".into())
        }
    }
}

fn finite(value: Option<f64>) -> Outcome {
    match value {
        Some(v) if v.is_finite() => Outcome::Number(tidy(v)),
        Some(_) => Outcome::Undefined("the result overflows for these values".into()),
        None => Outcome::Undefined("there are no values".into()),
    }
}

/// Rounds to 12 significant digits, so that 0.1 + 0.2 reports as 0.3 and not
/// 0.30000000000000004 (measurements are never that precise).
pub fn tidy(value: f64) -> f64 {
    if value == 0.0 || !value.is_finite() {
        return value;
    }
    format!("{value:.11e}").parse().unwrap_or(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(values: &[f64]) -> Sample {
        Sample::new(values, &[], values.len())
    }

    fn number(outcome: Outcome) -> f64 {
        match outcome {
            Outcome::Number(v) => v,
            other => panic!("not a number: {other:?}"),
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn parses_codes_and_aliases() {
        for statistic in Statistic::ALL {
            assert_eq!(Statistic::parse(statistic.code()), Some(statistic));
        }
        assert_eq!(Statistic::parse("max"), Some(Statistic::Maximum));
        assert_eq!(Statistic::parse("min"), Some(Statistic::Minimum));
        assert_eq!(Statistic::parse("totalcount"), Some(Statistic::TotalCount));
        assert_eq!(Statistic::parse("mean"), None);
        assert!(Statistic::codes().starts_with("average, maximum"));
    }

    #[test]
    fn four_evenly_spaced_values() {
        // 60, 70, 80, 90 given out of order.
        let s = sample(&[80.0, 60.0, 90.0, 70.0]);
        let n = |st| number(s.compute(st));
        assert_eq!(s.compute(Statistic::Count), Outcome::Count(4));
        assert!(close(n(Statistic::Average), 75.0));
        assert!(close(n(Statistic::Sum), 300.0));
        assert!(close(n(Statistic::Minimum), 60.0));
        assert!(close(n(Statistic::Maximum), 90.0));
        assert!(close(n(Statistic::Median), 75.0));
        // Sample variance: (225 + 25 + 25 + 225) / 3.
        assert!(close(n(Statistic::Variance), 500.0 / 3.0));
        assert!(close(n(Statistic::StdDev), (500.0f64 / 3.0).sqrt()));
        // Ranks (n−1)p: 0.6 → 66, 2.4 → 84, 0.75 → 67.5, 2.25 → 82.5, 1.2 → 72, 1.8 → 78.
        assert!(close(n(Statistic::Percent20), 66.0));
        assert!(close(n(Statistic::Percent80), 84.0));
        assert!(close(n(Statistic::QuartileLower), 67.5));
        assert!(close(n(Statistic::QuartileUpper), 82.5));
        assert!(close(n(Statistic::QuartileDeviation), 7.5));
        assert!(close(n(Statistic::Quintile1), 66.0));
        assert!(close(n(Statistic::Quintile2), 72.0));
        assert!(close(n(Statistic::Quintile3), 78.0));
        assert!(close(n(Statistic::Quintile4), 84.0));
        assert!(close(n(Statistic::Skew), 0.0));
        // G2 = 20/6 · 102500/(500/3)² − 27/2 = 12.3 − 13.5.
        assert!(close(n(Statistic::Kurtosis), -1.2));
    }

    #[test]
    fn skewed_values() {
        // 1, 2, 3, 10: mean 4, deviations −3 −2 −1 6, Σd² = 50, Σd³ = 180, s² = 50/3.
        let s = sample(&[1.0, 2.0, 3.0, 10.0]);
        let expected = 4.0 / (3.0 * 2.0) * 180.0 / (50.0f64 / 3.0).powf(1.5);
        assert!(close(number(s.compute(Statistic::Skew)), expected));
        assert!(number(s.compute(Statistic::Skew)) > 1.0);
        assert!(close(number(s.compute(Statistic::Median)), 2.5));
    }

    #[test]
    fn too_few_or_equal_values_are_undefined() {
        let one = sample(&[5.0]);
        assert!(close(number(one.compute(Statistic::Median)), 5.0));
        assert!(close(number(one.compute(Statistic::QuartileUpper)), 5.0));
        assert!(matches!(
            one.compute(Statistic::StdDev),
            Outcome::Undefined(reason) if reason.contains("2 values")
        ));
        let empty = sample(&[]);
        assert_eq!(empty.compute(Statistic::Count), Outcome::Count(0));
        assert!(matches!(
            empty.compute(Statistic::Average),
            Outcome::Undefined(_)
        ));
        let flat = sample(&[3.0, 3.0, 3.0, 3.0]);
        assert!(close(number(flat.compute(Statistic::StdDev)), 0.0));
        assert!(matches!(
            flat.compute(Statistic::Skew),
            Outcome::Undefined(_)
        ));
        assert!(matches!(
            flat.compute(Statistic::Kurtosis),
            Outcome::Undefined(_)
        ));
        let huge = sample(&[f64::MAX, f64::MAX]);
        assert!(matches!(
            huge.compute(Statistic::Sum),
            Outcome::Undefined(_)
        ));
        let nan = Sample::new(&[f64::NAN, 1.0], &[], 2);
        assert_eq!(nan.compute(Statistic::Count), Outcome::Count(1));
        assert_eq!(nan.compute(Statistic::TotalCount), Outcome::Count(2));
    }

    #[test]
    fn regression_over_time() {
        // y = 60 + 5·h exactly.
        let points: Vec<Point> = [0.0, 1.0, 2.0, 4.0]
            .iter()
            .map(|&h| Point {
                hours: h,
                value: 60.0 + 5.0 * h,
            })
            .collect();
        let values: Vec<f64> = points.iter().map(|p| p.value).collect();
        let s = Sample::new(&values, &points, 4);
        assert_eq!(
            s.compute(Statistic::Regression),
            Outcome::Line {
                gradient: 5.0,
                intercept: 60.0
            }
        );
        let same_time = Sample::new(
            &[1.0, 2.0],
            &[
                Point {
                    hours: 1.0,
                    value: 1.0,
                },
                Point {
                    hours: 1.0,
                    value: 2.0,
                },
            ],
            2,
        );
        assert!(matches!(
            same_time.compute(Statistic::Regression),
            Outcome::Undefined(_)
        ));
    }

    #[test]
    fn tidy_rounds_float_noise() {
        assert_eq!(tidy(0.1 + 0.2), 0.3);
        assert_eq!(tidy(75.0), 75.0);
        assert_eq!(tidy(-1.2000000000000002), -1.2);
        assert_eq!(tidy(0.0), 0.0);
    }
}
