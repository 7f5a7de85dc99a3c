//! NVTX ranges, so that Nsight Systems shows the phases of a step (forward, backward, clip, noise,
//! optimizer, layers) above the kernels they launch.
//!
//! ```
//! let _step = dpgan::profile::range("dp_sgd_step");
//! {
//!     let _clip = dpgan::profile::range("clip");
//!     // ... kernels launched here appear under dp_sgd_step / clip
//! } // popped here
//! ```
//!
//! # How it reaches the profiler
//! NVTX v3 is a header-only C library whose functions do nothing until a tool injects itself, and
//! the pinned CUDA pip packages ship no `nvtx3/` headers to compile against. So dpgan speaks the
//! injection protocol itself (the one `nvtxDetail/nvtxInit.h` implements, stable since NVTX 2):
//! 1. on the first range, if `NVTX_INJECTION64_PATH` is set (Nsight Systems and Nsight Compute set
//!    it in the profiled process), the library it names is `dlopen`ed and its
//!    `InitializeInjectionNvtx2(GetExportTable)` is called;
//! 2. the tool asks `GetExportTable(NVTX_ETID_CALLBACKS)` for `GetModuleFunctionTable` and, per
//!    module, receives an array of pointers to dpgan's function-pointer slots, into which it writes
//!    its own implementations;
//! 3. afterwards `range` calls the tool's `nvtxRangePushA` and the guard's drop its `nvtxRangePop`.
//!
//! Without the variable (every run that is not profiled, and every CPU-only build) nothing is
//! loaded: a range costs one atomic load and a branch. This needs no CUDA header, no C compiler
//! and no library at build time, and it cannot fail a run: a tool that does not load or refuses to
//! initialise leaves ranges as no-ops (with one line on stderr). `tests/nvtx_injection.rs` checks
//! the protocol against a small injection library written to the NVTX headers' layout.
//!
//! # Wall time per phase
//! The same ranges can also feed an opt-in timing sink on the calling thread ([`PhaseTimer`]):
//! `dpgan bench step --phases` maps range names to phases (forward, backward, clip, ...) and gets
//! the wall time spent in each, exclusive of nested phases. The sink may synchronise the device at
//! every boundary of a timed range, so that queued GPU work is charged to the phase that launched
//! it; that perturbs the step, which is why the benchmark runs it in a pass of its own. Without a
//! sink a range pays one more relaxed atomic load.
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// NVTX's API version (`NVTX_VERSION`), reported to the tool through the version export table.
const NVTX_VERSION: u32 = 3;
/// `NvtxExportTableID`.
const ETID_CALLBACKS: u32 = 1;
const ETID_VERSIONINFO: u32 = 3;
/// `NvtxCallbackModule` ids 1..=6 (CORE, CUDA, OPENCL, CUDART, CORE2, SYNC) and each module's
/// `NVTX_CBID_*_SIZE`: the tool may fill any of them, so each gets real slots.
const MODULE_SIZES: [usize; 6] = [16, 9, 15, 7, 16, 7];
/// `NVTX_CBID_CORE_RangePushA` and `NVTX_CBID_CORE_RangePop`.
const CBID_RANGE_PUSH_A: usize = 9;
const CBID_RANGE_POP: usize = 11;

type PushA = unsafe extern "C" fn(*const c_char) -> c_int;
type Pop = unsafe extern "C" fn() -> c_int;
type GetExportTable = unsafe extern "C" fn(u32) -> *const c_void;
type InitializeInjection = unsafe extern "C" fn(GetExportTable) -> c_int;

/// The callbacks export table (`NvtxExportTableCallbacks`).
#[repr(C)]
struct ExportTableCallbacks {
    struct_size: usize,
    get_module_function_table: unsafe extern "C" fn(c_int, *mut *const *const AtomicUsize, *mut c_uint) -> c_int,
}

/// The version export table (`NvtxExportTableVersionInfo`).
#[repr(C)]
struct ExportTableVersionInfo {
    struct_size: usize,
    version: u32,
    reserved0: u32,
    set_injection_nvtx_version: unsafe extern "C" fn(u32),
}

static CALLBACKS: ExportTableCallbacks =
    ExportTableCallbacks { struct_size: std::mem::size_of::<ExportTableCallbacks>(), get_module_function_table };
static VERSION_INFO: ExportTableVersionInfo = ExportTableVersionInfo {
    struct_size: std::mem::size_of::<ExportTableVersionInfo>(),
    version: NVTX_VERSION,
    reserved0: 0,
    set_injection_nvtx_version,
};

/// One function-pointer slot per callback id of every module (index 0, the invalid id, unused);
/// the tool stores its implementations here. A slot is a pointer-sized word (0: not provided).
struct Slots {
    modules: Vec<Box<[AtomicUsize]>>,
    /// Per module, what `GetModuleFunctionTable` hands out: null, a pointer to each slot 1..SIZE,
    /// and a trailing null (so that a tool reading one past the end crashes instead of writing).
    tables: Vec<Box<[*const AtomicUsize]>>,
}

// SAFETY: the raw pointers point into `modules`' boxes, which live as long as the `Slots` (a
// static) and are only ever accessed atomically or by the tool through those pointers.
unsafe impl Sync for Slots {}
// SAFETY: as above.
unsafe impl Send for Slots {}

fn slots() -> &'static Slots {
    static SLOTS: OnceLock<Slots> = OnceLock::new();
    SLOTS.get_or_init(|| {
        let modules: Vec<Box<[AtomicUsize]>> = MODULE_SIZES.iter().map(|&n| (0..n).map(|_| AtomicUsize::new(0)).collect()).collect();
        let tables = modules
            .iter()
            .map(|m| {
                let mut t: Vec<*const AtomicUsize> = vec![std::ptr::null()];
                t.extend(m.iter().skip(1).map(|s| s as *const AtomicUsize));
                t.push(std::ptr::null());
                t.into_boxed_slice()
            })
            .collect();
        Slots { modules, tables }
    })
}

/// `GetModuleFunctionTable`: module `module`'s slot table and its size (`NVTX_CBID_*_SIZE`).
unsafe extern "C" fn get_module_function_table(module: c_int, out_table: *mut *const *const AtomicUsize, out_size: *mut c_uint) -> c_int {
    let Some(index) = usize::try_from(module).ok().and_then(|m| m.checked_sub(1)).filter(|&m| m < MODULE_SIZES.len()) else {
        return 0;
    };
    let table = &slots().tables[index];
    if !out_size.is_null() {
        // SAFETY: the tool passes a valid pointer or null (checked).
        unsafe { *out_size = (table.len() - 1) as c_uint };
    }
    if !out_table.is_null() {
        // SAFETY: as above.
        unsafe { *out_table = table.as_ptr() };
    }
    1
}

unsafe extern "C" fn get_export_table(id: u32) -> *const c_void {
    match id {
        ETID_CALLBACKS => &CALLBACKS as *const ExportTableCallbacks as *const c_void,
        ETID_VERSIONINFO => &VERSION_INFO as *const ExportTableVersionInfo as *const c_void,
        _ => std::ptr::null(),
    }
}

/// Reserved by NVTX for tools to announce their version; nothing to do.
unsafe extern "C" fn set_injection_nvtx_version(_version: u32) {}

/// The attached tool's range functions.
#[derive(Clone, Copy)]
struct Tool {
    push: PushA,
    pop: Pop,
}

#[cfg(unix)]
extern "C" {
    fn dlopen(filename: *const c_char, flags: c_int) -> *mut c_void;
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    fn dlerror() -> *const c_char;
}
#[cfg(unix)]
const RTLD_LAZY: c_int = 1;

/// The tool named by `NVTX_INJECTION64_PATH`, initialised once per process; `None` when no tool
/// is attached or it could not be loaded.
fn tool() -> Option<Tool> {
    static TOOL: OnceLock<Option<Tool>> = OnceLock::new();
    *TOOL.get_or_init(|| {
        let path = std::env::var_os("NVTX_INJECTION64_PATH")?;
        match inject(&path) {
            Ok(tool) => tool,
            Err(e) => {
                eprintln!("dpgan: NVTX ranges disabled: {e}");
                None
            }
        }
    })
}

#[cfg(unix)]
fn dl_error() -> String {
    // SAFETY: dlerror returns null or a NUL-terminated string valid until the next dl call.
    let e = unsafe { dlerror() };
    if e.is_null() {
        "unknown error".into()
    } else {
        // SAFETY: non-null, NUL-terminated (above).
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}

/// NVTX injection is implemented here for Unix (`dlopen`), where dpgan's GPUs run.
#[cfg(not(unix))]
fn inject(path: &std::ffi::OsStr) -> Result<Option<Tool>, String> {
    Err(format!("NVTX_INJECTION64_PATH {path:?}: injection is only implemented on Unix"))
}

/// Loads the injection library and lets it fill the slots; `Ok(None)` when it provides no ranges.
#[cfg(unix)]
fn inject(path: &std::ffi::OsStr) -> Result<Option<Tool>, String> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = CString::new(path.as_bytes()).map_err(|_| format!("NVTX_INJECTION64_PATH {path:?} holds a NUL byte"))?;
    // The slots exist before the tool asks for them.
    let slots = slots();
    // SAFETY: a NUL-terminated path; the handle is never closed (the tool stays for the process).
    let handle = unsafe { dlopen(c_path.as_ptr(), RTLD_LAZY) };
    if handle.is_null() {
        return Err(format!("cannot load {path:?}: {}", dl_error()));
    }
    // SAFETY: a valid handle and a NUL-terminated symbol name.
    let init = unsafe { dlsym(handle, c"InitializeInjectionNvtx2".as_ptr()) };
    if init.is_null() {
        return Err(format!("{path:?} has no InitializeInjectionNvtx2"));
    }
    // SAFETY: the NVTX injection entry point has this signature (nvtxTypes.h,
    // NvtxInitializeInjectionNvtxFunc_t); our export tables follow the same header's layout.
    let status = unsafe {
        let init: InitializeInjection = std::mem::transmute::<*mut c_void, InitializeInjection>(init);
        init(get_export_table)
    };
    if status == 0 {
        return Err(format!("{path:?}: InitializeInjectionNvtx2 returned 0"));
    }
    let core = &slots.modules[0];
    let (push, pop) = (core[CBID_RANGE_PUSH_A].load(Ordering::Acquire), core[CBID_RANGE_POP].load(Ordering::Acquire));
    if push == 0 || pop == 0 {
        return Ok(None);
    }
    // SAFETY: non-zero slots hold the tool's nvtxRangePushA and nvtxRangePop, whose signatures
    // nvtxTypes.h fixes (nvtxRangePushA_impl_fntype, nvtxRangePop_impl_fntype).
    Ok(Some(unsafe { Tool { push: std::mem::transmute::<usize, PushA>(push), pop: std::mem::transmute::<usize, Pop>(pop) } }))
}

/// Whether a profiler is attached and receiving ranges (initialises NVTX on first call).
pub fn enabled() -> bool {
    tool().is_some()
}

/// An open NVTX range, closed when dropped. Not `Send`: NVTX ranges nest per thread, so the pop
/// must happen on the thread that pushed.
#[must_use = "a range closes when its guard is dropped; bind it with `let _range = ...`"]
pub struct RangeGuard {
    tool: Option<Tool>,
    /// Whether this range opened a phase in this thread's [`PhaseTimer`] (closed on drop).
    timed: bool,
    _not_send: PhantomData<*const ()>,
}

/// Opens a range named `name` on this thread (nested in any open one) until the guard drops.
/// Names are static phase or layer names (`"forward"`, `"clip"`, a kernel symbol): under a
/// profiler each push copies the name once; without one nothing happens.
pub fn range(name: &str) -> RangeGuard {
    let tool = tool();
    if let Some(t) = tool {
        // An interior NUL cannot occur in our names; a name with one is cut there, not dropped.
        let bytes = name.as_bytes();
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        let c_name = CString::new(&bytes[..end]).unwrap_or_default();
        // SAFETY: the tool's nvtxRangePushA takes a NUL-terminated string and copies it.
        unsafe { (t.push)(c_name.as_ptr()) };
    }
    let timed = TIMERS.load(Ordering::Relaxed) > 0 && SINK.with(|s| s.borrow_mut().as_mut().is_some_and(|sink| sink.open(name)));
    RangeGuard { tool, timed, _not_send: PhantomData }
}

/// Runs `f` inside a range named `name`.
pub fn scoped<T>(name: &str, f: impl FnOnce() -> T) -> T {
    let _range = range(name);
    f()
}

impl Drop for RangeGuard {
    fn drop(&mut self) {
        if self.timed {
            SINK.with(|s| {
                if let Some(sink) = s.borrow_mut().as_mut() {
                    sink.close();
                }
            });
        }
        if let Some(t) = self.tool {
            // SAFETY: pops the range this guard pushed, on the same thread (the guard is !Send).
            unsafe { (t.pop)() };
        }
    }
}

/// Threads with a [`PhaseTimer`] running: while it is 0, `range` does not look at [`SINK`].
static TIMERS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SINK: RefCell<Option<Sink>> = const { RefCell::new(None) };
}

/// Maps a range name to the phase its time is charged to; `None` leaves the range transparent
/// (its time stays with the enclosing phase).
pub type Classify = fn(&str) -> Option<&'static str>;
/// Called at every boundary of a classified range (a device synchronisation, or nothing).
pub type Barrier = Box<dyn Fn() -> crate::Result<()>>;

/// An open phase: its name and when it last became the innermost one.
struct Frame {
    phase: &'static str,
    resumed: Instant,
}

struct Sink {
    classify: Classify,
    barrier: Barrier,
    stack: Vec<Frame>,
    totals: BTreeMap<&'static str, Duration>,
    /// The first failure of `barrier`, reported by [`PhaseTimer::finish`].
    error: Option<crate::Error>,
}

impl Sink {
    fn barrier(&mut self) {
        if let Err(e) = (self.barrier)() {
            self.error.get_or_insert(e);
        }
    }

    /// Opens `name` if it is classified: the enclosing phase stops accruing, this one starts.
    fn open(&mut self, name: &str) -> bool {
        let Some(phase) = (self.classify)(name) else { return false };
        self.barrier();
        let now = Instant::now();
        if let Some(top) = self.stack.last() {
            *self.totals.entry(top.phase).or_default() += now - top.resumed;
        }
        self.stack.push(Frame { phase, resumed: now });
        true
    }

    /// Closes the innermost phase; the enclosing one accrues again from now.
    fn close(&mut self) {
        self.barrier();
        let now = Instant::now();
        if let Some(top) = self.stack.pop() {
            *self.totals.entry(top.phase).or_default() += now - top.resumed;
        }
        if let Some(parent) = self.stack.last_mut() {
            parent.resumed = now;
        }
    }
}

/// Wall time per phase on the current thread, from the ranges opened while it runs: each instant
/// inside a classified range is charged to the innermost classified range open then, so phases
/// never count the same time twice and their sum is the time spent inside any of them.
pub struct PhaseTimer {
    _not_send: PhantomData<*const ()>,
}

impl PhaseTimer {
    /// Starts timing on this thread; fails if a timer already runs here.
    pub fn start(classify: Classify, barrier: Barrier) -> crate::Result<PhaseTimer> {
        SINK.with(|s| {
            let mut s = s.borrow_mut();
            if s.is_some() {
                return Err(crate::Error::Invalid("a phase timer already runs on this thread".into()));
            }
            *s = Some(Sink { classify, barrier, stack: Vec::new(), totals: BTreeMap::new(), error: None });
            TIMERS.fetch_add(1, Ordering::Relaxed);
            Ok(PhaseTimer { _not_send: PhantomData })
        })
    }

    /// Stops timing and returns the time per phase (phases never entered are absent). Fails with
    /// the barrier's first error, or if a timed range is still open.
    pub fn finish(self) -> crate::Result<BTreeMap<&'static str, Duration>> {
        let sink = SINK.with(|s| s.borrow_mut().take()).expect("a running timer owns the sink");
        TIMERS.fetch_sub(1, Ordering::Relaxed);
        std::mem::forget(self);
        if let Some(e) = sink.error {
            return Err(e);
        }
        if let Some(open) = sink.stack.last() {
            return Err(crate::Error::Invalid(format!("phase {} was still open when the timer stopped", open.phase)));
        }
        Ok(sink.totals.into_iter().collect())
    }
}

impl Drop for PhaseTimer {
    /// A timer dropped without `finish` (an error path) still stops timing.
    fn drop(&mut self) {
        if SINK.with(|s| s.borrow_mut().take()).is_some() {
            TIMERS.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tables the tool receives: null first and last, and every slot in between distinct.
    #[test]
    fn module_tables_point_at_every_slot() {
        for (module, &size) in MODULE_SIZES.iter().enumerate() {
            let (mut table, mut n) = (std::ptr::null(), 0);
            // SAFETY: valid out-pointers.
            assert_eq!(unsafe { get_module_function_table(module as c_int + 1, &mut table, &mut n) }, 1);
            assert_eq!(n as usize, size, "module {}", module + 1);
            // SAFETY: the table holds size + 1 entries.
            let entries = unsafe { std::slice::from_raw_parts(table, size + 1) };
            assert!(entries[0].is_null() && entries[size].is_null());
            for (id, &p) in entries.iter().enumerate().take(size).skip(1) {
                assert!(std::ptr::eq(p, &slots().modules[module][id]), "module {} id {id}", module + 1);
            }
        }
        // SAFETY: null out-pointers are allowed.
        unsafe {
            assert_eq!(get_module_function_table(0, std::ptr::null_mut(), std::ptr::null_mut()), 0);
            assert_eq!(get_module_function_table(7, std::ptr::null_mut(), std::ptr::null_mut()), 0);
        }
    }

    /// Without a profiler (the variable unset) nothing is loaded and ranges nest and close as
    /// no-ops, dynamic names included.
    #[test]
    fn ranges_without_a_tool_are_no_ops() {
        if std::env::var_os("NVTX_INJECTION64_PATH").is_some() {
            eprintln!("ranges_without_a_tool_are_no_ops: skipped: running under a profiler");
            return;
        }
        let outer = range("outer");
        assert!(outer.tool.is_none() && !outer.timed);
        for layer in 0..3 {
            let inner = range(&format!("layer {layer}"));
            assert!(inner.tool.is_none());
        }
        drop(outer);
        assert!(!enabled());
    }

    #[test]
    fn export_tables_have_the_nvtx_layout() {
        // SAFETY: plain lookups.
        let (callbacks, version, other) = unsafe { (get_export_table(1), get_export_table(3), get_export_table(2)) };
        assert!(other.is_null());
        // SAFETY: the tables are statics of these types.
        let (c, v) = unsafe { (&*(callbacks as *const ExportTableCallbacks), &*(version as *const ExportTableVersionInfo)) };
        assert_eq!(c.struct_size, 16);
        assert_eq!((v.struct_size, v.version), (24, 3));
    }

    fn classify(name: &str) -> Option<&'static str> {
        match name {
            "step" => Some("other"),
            "work" | "inner work" => Some("work"),
            "clip" => Some("clip"),
            _ => None,
        }
    }

    fn spin(ms: u64) {
        let end = Instant::now() + Duration::from_millis(ms);
        while Instant::now() < end {}
    }

    /// Nested phases are charged exclusively, transparent ranges leave their time with the
    /// enclosing phase, and the phases add up to the outermost range's wall time.
    #[test]
    fn phase_timer_charges_the_innermost_classified_range() {
        let barriers = std::rc::Rc::new(std::cell::Cell::new(0));
        let counted = barriers.clone();
        let timer = PhaseTimer::start(
            classify,
            Box::new(move || {
                counted.set(counted.get() + 1);
                Ok(())
            }),
        )
        .unwrap();
        assert!(PhaseTimer::start(classify, Box::new(|| Ok(()))).is_err(), "one timer per thread");
        let started = Instant::now();
        {
            let _step = range("step");
            spin(5);
            {
                let _work = range("work");
                let kernel = range("some_kernel");
                assert!(!kernel.timed);
                spin(10);
                drop(kernel);
                let _clip = range("clip");
                spin(50);
            }
            spin(5);
        }
        let elapsed = started.elapsed();
        let totals = timer.finish().unwrap();
        let ms = |p: &str| totals[p].as_secs_f64() * 1e3;
        assert_eq!(totals.keys().copied().collect::<Vec<_>>(), ["clip", "other", "work"]);
        assert!(ms("clip") >= 50.0 && ms("work") >= 10.0 && ms("other") >= 10.0, "{totals:?}");
        // Exclusive: work holds its 10 ms, not clip's 50 as well (the margin absorbs a descheduled
        // thread on a loaded machine).
        assert!(ms("work") < 50.0, "{totals:?}");
        let sum: Duration = totals.values().sum();
        assert!(sum <= elapsed, "{sum:?} > {elapsed:?}");
        assert_eq!(barriers.get(), 6, "a barrier at both ends of each of the three timed ranges");
        // Stopped: ranges are no longer timed, and a new timer can start.
        assert!(!range("work").timed);
        PhaseTimer::start(classify, Box::new(|| Ok(()))).unwrap().finish().unwrap();
    }

    #[test]
    fn a_failing_barrier_and_an_open_range_are_reported() {
        let timer = PhaseTimer::start(classify, Box::new(|| Err(crate::Error::Invalid("device lost".into())))).unwrap();
        drop(range("work"));
        assert!(timer.finish().unwrap_err().to_string().contains("device lost"));
        let timer = PhaseTimer::start(classify, Box::new(|| Ok(()))).unwrap();
        let open = range("work");
        assert!(timer.finish().unwrap_err().to_string().contains("work was still open"));
        drop(open);
    }
}
