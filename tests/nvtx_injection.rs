//! `dpgan::profile` attached to an NVTX tool: a small injection library built from
//! tests/host_nvtx/injection.c (to the NVTX v3 headers' layout) is loaded through
//! `NVTX_INJECTION64_PATH` as Nsight Systems is, and logs the ranges it receives. One test in its
//! own binary, because the tool is attached once per process, at the first range.
use std::path::Path;
use std::process::Command;

/// A C compiler, or `None` after printing why the test is skipped.
fn c_compiler(test: &str) -> Option<&'static str> {
    let found = ["cc", "gcc", "clang"].into_iter().find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()));
    if found.is_none() {
        eprintln!("{test}: skipped: no C compiler (cc, gcc, clang) on PATH");
    }
    found
}

#[test]
fn ranges_reach_an_injected_tool_nested_and_named() {
    let test = "ranges_reach_an_injected_tool_nested_and_named";
    let Some(cc) = c_compiler(test) else { return };
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("libinjection.so");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/host_nvtx/injection.c");
    let out = Command::new(cc).args(["-shared", "-fPIC", "-O1", "-o"]).arg(&lib).arg(&source).output().unwrap();
    assert!(out.status.success(), "{cc} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let log = dir.path().join("events.log");
    // SAFETY (of set_var): this binary runs one test, and nothing else reads the environment yet.
    std::env::set_var("NVTX_INJECTION64_PATH", &lib);
    std::env::set_var("DPGAN_NVTX_TEST_LOG", &log);

    {
        let _step = dpgan::profile::range("dp_sgd_step");
        {
            let _clip = dpgan::profile::range("clip");
            let _kernel = dpgan::profile::range("dp_conv2d_weight_grad_sq_norms_bwd_f32");
        }
        let _noise = dpgan::profile::range("noise");
    }
    assert!(dpgan::profile::enabled(), "the injected tool should be attached");

    let events = std::fs::read_to_string(&log).unwrap();
    let expected =
        "init version 3\npush dp_sgd_step\npush clip\npush dp_conv2d_weight_grad_sq_norms_bwd_f32\npop\npop\npush noise\npop\npop\n";
    assert_eq!(events, expected, "events the tool received");
}
