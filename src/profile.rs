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
use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

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
    RangeGuard { tool, _not_send: PhantomData }
}

/// Runs `f` inside a range named `name`.
pub fn scoped<T>(name: &str, f: impl FnOnce() -> T) -> T {
    let _range = range(name);
    f()
}

impl Drop for RangeGuard {
    fn drop(&mut self) {
        if let Some(t) = self.tool {
            // SAFETY: pops the range this guard pushed, on the same thread (the guard is !Send).
            unsafe { (t.pop)() };
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
        assert!(outer.tool.is_none());
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
}
