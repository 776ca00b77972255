//! Keeps `libm.so.6` out of the binary's dynamic dependencies.
//!
//! The binary is exec'd as pid 1 of every new sandbox (`agent`), so each
//! shared library the loader maps is paid on every session's first command:
//! about 0.07 ms for libm on the CI machine, where page faults and CPUID
//! exits are slow. The only libm function the binary references is `pow`,
//! from tokio's multi-thread scheduler statistics (and any `f64::powf`).
//! Defining `pow` here lets the linker resolve it inside the binary, and
//! `--as-needed` then drops libm. The implementation is the `libm` crate's
//! port of musl's `pow`: pure arithmetic, so it cannot call back into itself.
//!
//! Its sibling, linking the unwinder statically instead of `libgcc_s.so.1`,
//! is done by `build.rs`.

/// C's `pow`, for every caller in this binary (`f64::powf` included).
#[unsafe(no_mangle)]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

#[cfg(test)]
mod tests {
    /// `f64::powf` resolves to the `pow` above in this test binary too, so
    /// these compare against values known independently, not against std.
    #[test]
    fn powf_gives_the_c_pow_results() {
        let cases: &[(f64, f64, f64)] = &[
            (2.0, 10.0, 1024.0),
            (2.0, -2.0, 0.25),
            (10.0, 3.0, 1000.0),
            (9.0, 0.5, 3.0),
            (0.5, 3.0, 0.125),
            (-2.0, 3.0, -8.0),
            (-2.0, 2.0, 4.0),
            (123.456, 0.0, 1.0),
            (0.0, 0.0, 1.0),
            (1.0, f64::NAN, 1.0),
            (0.0, -1.0, f64::INFINITY),
            (f64::INFINITY, -1.0, 0.0),
            (std::f64::consts::E, 1.0, std::f64::consts::E),
        ];
        for &(x, y, want) in cases {
            assert_eq!(std::hint::black_box(x).powf(y), want, "pow({x}, {y})");
        }
        assert!((-8.0f64).powf(std::hint::black_box(1.0 / 3.0)).is_nan());
        // Not exact in binary: within one ulp of the true value.
        let got = std::hint::black_box(0.9f64).powf(3.0);
        assert!((got - 0.729).abs() <= f64::EPSILON, "{got}");
    }

    /// The statically linked unwinder (build.rs) must still unwind panics
    /// and walk the stack; this test binary is linked the same way.
    #[test]
    fn the_static_unwinder_unwinds_panics_and_captures_backtraces() {
        let caught = std::panic::catch_unwind(|| panic!("expected by this test"));
        assert!(caught.is_err());

        let trace = std::backtrace::Backtrace::force_capture();
        assert_eq!(trace.status(), std::backtrace::BacktraceStatus::Captured);
        let text = trace.to_string();
        assert!(
            text.contains("the_static_unwinder_unwinds_panics"),
            "this function is not in the trace:\n{text}"
        );
    }
}
