//! `dpgan privacy`: the accountant from the command line. `epsilon` gives the (ε, δ) of a DP-SGD
//! run, `calibrate` the smallest noise multiplier for a target ε, `gs-wgan` both of GS-WGAN's
//! accountings. Arguments are checked here first so that an error names the flag to fix.
use clap::{Args, Subcommand, ValueEnum};
use dpgan::privacy::gswgan::{self, GsWganRun};
use dpgan::privacy::{calibrate_noise_multiplier, dp_sgd_epsilon, Conversion, Guarantee, Orders};
use dpgan::{Error, Result};
use serde::Serialize;

#[derive(Args, Debug)]
pub struct PrivacyArgs {
    #[command(subcommand)]
    command: PrivacyCommand,
}

#[derive(Subcommand, Debug)]
enum PrivacyCommand {
    /// ε at δ of T steps of the Poisson-subsampled Gaussian (DP-SGD), and the best Rényi order.
    Epsilon(EpsilonArgs),
    /// The smallest noise multiplier σ whose run meets a target ε at δ.
    Calibrate(CalibrateArgs),
    /// GS-WGAN's ε both ways: as published (B·T compositions) and per generator step (proven).
    GsWgan(GsWganArgs),
}

#[derive(Args, Debug)]
struct Accounting {
    /// How RDP becomes (ε, δ).
    #[arg(long, value_enum, default_value_t = ConversionArg::Improved)]
    conversion: ConversionArg,
    /// Which Rényi orders to optimise over [default: standard; fine for gs-wgan].
    #[arg(long, value_enum)]
    orders: Option<OrdersArg>,
    #[command(flatten)]
    json: super::json::JsonOut,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(super) enum ConversionArg {
    Improved,
    Classic,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(super) enum OrdersArg {
    Standard,
    #[value(name = "tf-privacy-0.2")]
    TfPrivacy02,
    /// 1.0001 to 1.9999 by 10⁻⁴, then the standard ones from 2 (gs-wgan only).
    Fine,
}

#[derive(Args, Debug)]
struct EpsilonArgs {
    /// q, the Poisson sampling rate (batch size / dataset size), in (0, 1].
    #[arg(long)]
    sample_rate: f64,
    /// σ, the noise standard deviation over the clipping norm.
    #[arg(long)]
    noise_multiplier: f64,
    /// T, the number of steps.
    #[arg(long)]
    steps: u64,
    /// δ, the probability with which the ε guarantee may fail, in (0, 1) (1e-5 for the published runs).
    #[arg(long)]
    delta: f64,
    #[command(flatten)]
    accounting: Accounting,
}

#[derive(Args, Debug)]
struct CalibrateArgs {
    /// q, the Poisson sampling rate (batch size / dataset size), in (0, 1].
    #[arg(long)]
    sample_rate: f64,
    /// T, the number of steps.
    #[arg(long)]
    steps: u64,
    /// δ, the probability with which the ε guarantee may fail, in (0, 1).
    #[arg(long)]
    delta: f64,
    /// The ε that T steps may spend at most: the answer is the smallest σ that stays within it.
    #[arg(long)]
    target_epsilon: f64,
    #[command(flatten)]
    accounting: Accounting,
}

#[derive(Args, Debug)]
struct GsWganArgs {
    /// σ, the sanitiser's noise standard deviation over the clipping norm (1.07 published).
    #[arg(long)]
    noise_multiplier: f64,
    /// k, the number of discriminators.
    #[arg(long)]
    discriminators: u64,
    /// B, the generator batch size.
    #[arg(long)]
    batch_size: u64,
    /// T, the number of generator iterations.
    #[arg(long)]
    iterations: u64,
    /// δ, the probability with which the ε guarantee may fail, in (0, 1).
    #[arg(long)]
    delta: f64,
    /// Conversion and orders of the per-step accounting (the as-published one is fixed by docs/algorithms.md;
    /// training uses the improved conversion and the fine orders, as here by default).
    #[command(flatten)]
    accounting: Accounting,
}

pub fn run(args: &PrivacyArgs) -> Result<()> {
    match &args.command {
        PrivacyCommand::Epsilon(a) => epsilon(a),
        PrivacyCommand::Calibrate(a) => calibrate(a),
        PrivacyCommand::GsWgan(a) => gs_wgan(a),
    }
}

impl ConversionArg {
    pub(super) fn value(self) -> Conversion {
        match self {
            ConversionArg::Improved => Conversion::Improved,
            ConversionArg::Classic => Conversion::Classic,
        }
    }
}

impl OrdersArg {
    pub(super) fn value(self) -> Orders {
        match self {
            OrdersArg::Standard => Orders::Standard,
            OrdersArg::TfPrivacy02 => Orders::TfPrivacy02,
            OrdersArg::Fine => Orders::Fine,
        }
    }
}

impl Accounting {
    fn conversion(&self) -> Conversion {
        self.conversion.value()
    }
    /// The orders of a DP-SGD command: the fine ones are refused, as the subsampled Gaussian's
    /// series at all 10,141 of them takes minutes.
    fn dp_sgd_orders(&self) -> Result<Orders> {
        match self.orders.unwrap_or(OrdersArg::Standard) {
            OrdersArg::Fine => Err(bad(
                "orders",
                "is for `privacy gs-wgan`, whose per-step bound is a closed form; use standard or tf-privacy-0.2 here",
                "fine",
            )),
            other => Ok(other.value()),
        }
    }
    fn describe(&self, orders: Orders) -> String {
        let conversion = match self.conversion {
            ConversionArg::Improved => "improved",
            ConversionArg::Classic => "classic",
        };
        let orders = match orders {
            Orders::Standard => "standard",
            Orders::TfPrivacy02 => "tf-privacy-0.2",
            Orders::Fine => "fine",
        };
        format!("{conversion} conversion, {orders} orders")
    }
}

fn bad(flag: &str, why: &str, value: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("--{flag} {why}, got {value}"))
}

fn check_sample_rate(q: f64) -> Result<()> {
    if q > 0.0 && q <= 1.0 {
        Ok(())
    } else {
        Err(bad("sample-rate", "must be in (0, 1]", q))
    }
}

fn check_positive(flag: &str, v: f64) -> Result<()> {
    if v > 0.0 && v.is_finite() {
        Ok(())
    } else {
        Err(bad(flag, "must be positive and finite", v))
    }
}

fn check_count(flag: &str, v: u64) -> Result<()> {
    if v >= 1 {
        Ok(())
    } else {
        Err(bad(flag, "must be at least 1", v))
    }
}

fn check_delta(d: f64) -> Result<()> {
    if d > 0.0 && d < 1.0 {
        Ok(())
    } else {
        Err(bad("delta", "must be in (0, 1)", d))
    }
}

#[derive(Serialize)]
struct EpsilonReport {
    epsilon: f64,
    order: f64,
    delta: f64,
    sample_rate: f64,
    noise_multiplier: f64,
    steps: u64,
    conversion: Conversion,
    orders: Orders,
}

/// A line for the text output when the best order is the first or last of the list: ε is then
/// still a valid bound, but a longer list could give a smaller one (Opacus warns the same way).
fn edge_note(g: &Guarantee, orders: Orders) -> String {
    let orders = orders.values();
    if orders.first() == Some(&g.order) || orders.last() == Some(&g.order) {
        format!("note: the best order {} is at the end of the order list; more orders could give a smaller epsilon\n", g.order)
    } else {
        String::new()
    }
}

fn epsilon(a: &EpsilonArgs) -> Result<()> {
    check_sample_rate(a.sample_rate)?;
    check_positive("noise-multiplier", a.noise_multiplier)?;
    check_count("steps", a.steps)?;
    check_delta(a.delta)?;
    let acc = &a.accounting;
    let orders = acc.dp_sgd_orders()?;
    let g = dp_sgd_epsilon(a.sample_rate, a.noise_multiplier, a.steps, a.delta, &orders.values(), acc.conversion())?;
    let text =
        format!("epsilon {} at delta {} (best order {}; {})\n{}", g.epsilon, g.delta, g.order, acc.describe(orders), edge_note(&g, orders));
    let report = EpsilonReport {
        epsilon: g.epsilon,
        order: g.order,
        delta: g.delta,
        sample_rate: a.sample_rate,
        noise_multiplier: a.noise_multiplier,
        steps: a.steps,
        conversion: acc.conversion(),
        orders,
    };
    acc.json.emit(&report, || text)
}

fn calibrate(a: &CalibrateArgs) -> Result<()> {
    check_sample_rate(a.sample_rate)?;
    check_count("steps", a.steps)?;
    check_delta(a.delta)?;
    check_positive("target-epsilon", a.target_epsilon)?;
    let acc = &a.accounting;
    let order_list = acc.dp_sgd_orders()?;
    let orders = order_list.values();
    let sigma =
        calibrate_noise_multiplier(a.sample_rate, a.steps, a.delta, a.target_epsilon, &orders, acc.conversion()).map_err(|e| match e {
            Error::Invalid(msg) => Error::Invalid(format!("--target-epsilon: {msg}")),
            other => other,
        })?;
    let g = dp_sgd_epsilon(a.sample_rate, sigma, a.steps, a.delta, &orders, acc.conversion())?;
    let text = format!(
        "noise multiplier {sigma} gives epsilon {} at delta {} (target {}; best order {}; {})\n",
        g.epsilon,
        g.delta,
        a.target_epsilon,
        g.order,
        acc.describe(order_list)
    );
    let report = EpsilonReport {
        epsilon: g.epsilon,
        order: g.order,
        delta: g.delta,
        sample_rate: a.sample_rate,
        noise_multiplier: sigma,
        steps: a.steps,
        conversion: acc.conversion(),
        orders: order_list,
    };
    acc.json.emit(&report, || text)
}

#[derive(Serialize)]
struct GsWganReport {
    /// The as-published ε, the one the paper reports (`reproduce` is governed by it, `train` by
    /// default by the per-step one).
    epsilon: f64,
    order: f64,
    delta: f64,
    as_published: Guarantee,
    per_step: Guarantee,
    per_step_noise_multiplier: f64,
    per_step_conversion: Conversion,
    per_step_orders: Orders,
    run: GsWganRun,
    iterations: u64,
}

fn gs_wgan(a: &GsWganArgs) -> Result<()> {
    check_positive("noise-multiplier", a.noise_multiplier)?;
    check_count("discriminators", a.discriminators)?;
    check_count("batch-size", a.batch_size)?;
    check_count("iterations", a.iterations)?;
    check_delta(a.delta)?;
    let run = GsWganRun { noise_multiplier: a.noise_multiplier, discriminators: a.discriminators, batch_size: a.batch_size };
    let acc = &a.accounting;
    let orders = acc.orders.map_or(Orders::Fine, OrdersArg::value);
    let published = gswgan::as_published(&run, a.iterations, a.delta)?;
    let per_step = gswgan::per_step(&run, a.iterations, a.delta, &orders.values(), acc.conversion())?;
    let text = format!(
        "as-published: epsilon {} at delta {} (order {}; {} x {} compositions of the Gaussian subsampled without replacement at 1/{}, classic conversion)\n\
         per-step:     epsilon {} at delta {} (order {}; {} steps, each choosing one of {} slices and a Gaussian of \
         noise multiplier {} on it: the joint-convexity bound, a proof; {})\n{}",
        published.epsilon,
        published.delta,
        published.order,
        a.batch_size,
        a.iterations,
        a.discriminators,
        per_step.epsilon,
        per_step.delta,
        per_step.order,
        a.iterations,
        a.discriminators,
        run.per_step_noise_multiplier(),
        acc.describe(orders),
        edge_note(&per_step, orders)
    );
    let report = GsWganReport {
        epsilon: published.epsilon,
        order: published.order,
        delta: a.delta,
        as_published: published,
        per_step,
        per_step_noise_multiplier: run.per_step_noise_multiplier(),
        per_step_conversion: acc.conversion(),
        per_step_orders: orders,
        run,
        iterations: a.iterations,
    };
    acc.json.emit(&report, || text)
}
