//! Kernels from CUDA C source: NVRTC compilation cached per process, modules cached per device,
//! and [`Launch`], the argument builder that queues a [`Kernel`] on a [`Stream`].
//!
//! [`Gpu::kernel`] works in four steps:
//!
//! 1. Pick the target from the device's compute capability: `sm_XY` (a CUBIN, no driver JIT) when
//!    this NVRTC supports it, else `compute_XY` PTX for the newest architecture it supports that
//!    is not newer than the device (the driver compiles that PTX when loading it).
//! 2. Look up `(source, options with the target)` in the process-wide image cache; on a miss,
//!    compile with NVRTC (once per key, even when threads race) and keep the image.
//! 3. Look up the image in the device's module cache; on a miss, load it (`cuModuleLoadData`).
//! 4. Find the entry point by name (`cuModuleGetFunction`). Kernels must be `extern "C"` so that
//!    their names are not mangled.
//!
//! Compile errors come back as [`GpuError::Compile`] with NVRTC's log. [`kernel_cache_stats`]
//! counts compilations, module loads and cache hits.
//!
//! Not done yet: C++ name expressions (templated kernels), header include paths, an on-disk
//! cache across processes, cooperative and cluster launches.

use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char, c_int};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{
    CudaFunction, CudaModule, DeviceRepr, LaunchArgs, LaunchConfig, PushKernelArg, sys as dsys,
};
use cudarc::nvrtc::{Ptx, result as nresult, sys as nsys};

use crate::buffer::DeviceBuffer;
use crate::device::Gpu;
use crate::error::{DriverResultExt, GpuError, Result};
use crate::loader;
use crate::stream::Stream;

/// Counts of the kernel caches' work since the process started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelCacheStats {
    /// NVRTC compilations (image cache misses), successful or not.
    pub compilations: u64,
    /// Modules loaded into a device context (module cache misses).
    pub module_loads: u64,
    /// [`Gpu::kernel`] calls answered without compiling or loading.
    pub hits: u64,
}

static COMPILATIONS: AtomicU64 = AtomicU64::new(0);
static MODULE_LOADS: AtomicU64 = AtomicU64::new(0);
static HITS: AtomicU64 = AtomicU64::new(0);
static NEXT_IMAGE_ID: AtomicU64 = AtomicU64::new(1);

/// The process-wide counts of compilations, module loads and cache hits.
pub fn kernel_cache_stats() -> KernelCacheStats {
    KernelCacheStats {
        compilations: COMPILATIONS.load(Ordering::Relaxed),
        module_loads: MODULE_LOADS.load(Ordering::Relaxed),
        hits: HITS.load(Ordering::Relaxed),
    }
}

/// What an image is compiled from; two equal keys give the same image.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ImageKey {
    source: String,
    /// All NVRTC options, the `--gpu-architecture=` target included.
    options: Vec<String>,
}

/// A compiled program, ready for `cuModuleLoadData`.
#[derive(Debug)]
struct Image {
    id: u64,
    target: String,
    code: Code,
}

#[derive(Debug)]
enum Code {
    Cubin(Vec<u8>),
    Ptx(String),
}

type ImageSlot = Arc<Mutex<Option<Arc<Image>>>>;

fn images() -> &'static Mutex<HashMap<ImageKey, ImageSlot>> {
    static IMAGES: OnceLock<Mutex<HashMap<ImageKey, ImageSlot>>> = OnceLock::new();
    IMAGES.get_or_init(Default::default)
}

/// Per-device cache of loaded modules, keyed by image id.
#[derive(Default)]
pub(crate) struct ModuleCache {
    modules: Mutex<HashMap<u64, Arc<CudaModule>>>,
}

/// A kernel entry point loaded on one device. Cheap to clone.
#[derive(Clone)]
pub struct Kernel {
    func: CudaFunction,
    module: Arc<CudaModule>,
    name: Arc<str>,
    target: Arc<str>,
    gpu: Gpu,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel")
            .field("name", &self.name)
            .field("target", &self.target)
            .field("ordinal", &self.gpu.ordinal())
            .finish()
    }
}

impl Gpu {
    /// Compiles (once per process) and loads (once per device) the `extern "C" __global__`
    /// function `name` from CUDA C `source`, for this device's architecture.
    pub fn kernel(&self, source: &str, name: &str) -> Result<Kernel> {
        self.kernel_with_options(source, name, &[])
    }

    /// [`Gpu::kernel`] with extra NVRTC options (e.g. `"--use_fast_math"`, `"-DWORD=8"`); the
    /// options are part of the cache key. Do not pass `--gpu-architecture`: it is chosen here.
    pub fn kernel_with_options(
        &self,
        source: &str,
        name: &str,
        options: &[&str],
    ) -> Result<Kernel> {
        loader::nvrtc()?;
        if source.contains('\0') || name.contains('\0') {
            return Err(GpuError::InvalidArgument {
                what: "kernel source and name must not contain NUL bytes".into(),
            });
        }
        let target = loader::guard_nvrtc("choosing the NVRTC target", || {
            choose_target(self.compute_capability(), &supported_archs()?).ok_or_else(|| {
                GpuError::Compile {
                    name: name.to_string(),
                    log: format!(
                        "NVRTC {} cannot compile for compute capability {}.{}",
                        nvrtc_version(),
                        self.compute_capability().0,
                        self.compute_capability().1
                    ),
                }
            })
        })?;
        let mut all_options: Vec<String> = vec![format!("--gpu-architecture={target}")];
        all_options.extend(options.iter().map(|o| o.to_string()));
        let key = ImageKey {
            source: source.to_string(),
            options: all_options,
        };
        let (image, compiled) = image_for(&key, name, &target)?;
        let (module, loaded) = self.inner.modules.get_or_load(self, &image)?;
        if !compiled && !loaded {
            HITS.fetch_add(1, Ordering::Relaxed);
        }
        let func = module.load_function(name).map_err(|e| {
            if e.0 == dsys::CUresult::CUDA_ERROR_NOT_FOUND {
                GpuError::Compile {
                    name: name.to_string(),
                    log: format!(
                        "the program compiled, but has no kernel named `{name}`; declare it \
                         `extern \"C\" __global__` so that its name is not mangled"
                    ),
                }
            } else {
                crate::error::driver("cuModuleGetFunction", e)
            }
        })?;
        Ok(Kernel {
            func,
            module,
            name: name.into(),
            target: image.target.as_str().into(),
            gpu: self.clone(),
        })
    }
}

/// Returns the cached image for `key`, compiling it if needed; the flag says whether this call
/// compiled it.
fn image_for(key: &ImageKey, name: &str, target: &str) -> Result<(Arc<Image>, bool)> {
    let slot = {
        let mut map = images().lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key.clone()).or_default().clone()
    };
    // Holding the slot's lock while compiling makes racing threads wait for one compilation.
    let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(image) = slot.as_ref() {
        return Ok((image.clone(), false));
    }
    COMPILATIONS.fetch_add(1, Ordering::Relaxed);
    let code = loader::guard_nvrtc("compiling with NVRTC", || {
        compile(&key.source, name, &key.options, target.starts_with("sm_"))
    })?;
    let image = Arc::new(Image {
        id: NEXT_IMAGE_ID.fetch_add(1, Ordering::Relaxed),
        target: target.to_string(),
        code,
    });
    *slot = Some(image.clone());
    Ok((image, true))
}

impl ModuleCache {
    /// Returns the module for `image`, loading it if needed; the flag says whether this call
    /// loaded it.
    fn get_or_load(&self, gpu: &Gpu, image: &Image) -> Result<(Arc<CudaModule>, bool)> {
        let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = modules.get(&image.id) {
            return Ok((m.clone(), false));
        }
        let ptx = match &image.code {
            Code::Cubin(bytes) => Ptx::from_binary(bytes.clone()),
            Code::Ptx(text) => Ptx::from_src(text.clone()),
        };
        let module = gpu.ctx().load_module(ptx).during("cuModuleLoadData")?;
        MODULE_LOADS.fetch_add(1, Ordering::Relaxed);
        modules.insert(image.id, module.clone());
        Ok((module, true))
    }
}

/// The architectures this NVRTC can target, as `major * 10 + minor` (75, 80, 90, 100, ...).
fn supported_archs() -> Result<Vec<i32>> {
    let mut n: c_int = 0;
    // SAFETY: `n` is a valid out-pointer and NVRTC is loaded.
    let code = unsafe { nsys::nvrtcGetNumSupportedArchs(&mut n) };
    nvrtc_check("nvrtcGetNumSupportedArchs", code)?;
    let mut archs = vec![0 as c_int; n.max(0) as usize];
    if !archs.is_empty() {
        // SAFETY: `archs` has room for the `n` entries NVRTC just said it will write.
        let code = unsafe { nsys::nvrtcGetSupportedArchs(archs.as_mut_ptr()) };
        nvrtc_check("nvrtcGetSupportedArchs", code)?;
    }
    Ok(archs)
}

/// `sm_XY` when NVRTC supports the device's architecture exactly, else `compute_XY` of the newest
/// supported architecture not newer than the device, else `None`.
fn choose_target((major, minor): (u32, u32), supported: &[i32]) -> Option<String> {
    let cc = (major * 10 + minor) as i32;
    if supported.contains(&cc) {
        return Some(format!("sm_{cc}"));
    }
    supported
        .iter()
        .copied()
        .filter(|&a| a <= cc)
        .max()
        .map(|a| format!("compute_{a}"))
}

fn nvrtc_version() -> String {
    let (mut major, mut minor): (c_int, c_int) = (0, 0);
    // SAFETY: both are valid out-pointers and NVRTC is loaded.
    let code = unsafe { nsys::nvrtcVersion(&mut major, &mut minor) };
    match code {
        nsys::nvrtcResult::NVRTC_SUCCESS => format!("{major}.{minor}"),
        _ => "(unknown version)".to_string(),
    }
}

fn nvrtc_check(call: &'static str, code: nsys::nvrtcResult) -> Result<()> {
    code.result().map_err(|e| GpuError::NoCompiler {
        detail: format!("{call} failed: {}", nvrtc_message(e)),
    })
}

fn nvrtc_message(e: nresult::NvrtcError) -> String {
    // SAFETY: nvrtcGetErrorString returns a pointer to a static NUL-terminated string.
    let text = unsafe { nsys::nvrtcGetErrorString(e.0) };
    if text.is_null() {
        format!("{:?}", e.0)
    } else {
        // SAFETY: non-null, static and NUL-terminated (see above).
        unsafe { CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned()
    }
}

/// Owns an NVRTC program and destroys it on drop.
struct Program(nsys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the program was created by `nvrtcCreateProgram` and is destroyed once, here.
        if let Err(e) = unsafe { nresult::destroy_program(self.0) } {
            tracing::warn!(error = %nvrtc_message(e), "nvrtcDestroyProgram failed");
        }
    }
}

/// Compiles `source` with `options`; returns a CUBIN when `cubin` (real `sm_` target), else PTX.
fn compile(source: &str, name: &str, options: &[String], cubin: bool) -> Result<Code> {
    let compile_error = |log: String| GpuError::Compile {
        name: name.to_string(),
        log,
    };
    let src = CString::new(source).map_err(|_| compile_error("source contains NUL".into()))?;
    let file = CString::new(format!("{name}.cu"))
        .map_err(|_| compile_error("name contains NUL".into()))?;
    let prog = nresult::create_program(&src, Some(file.as_c_str()))
        .map_err(|e| compile_error(format!("nvrtcCreateProgram failed: {}", nvrtc_message(e))))?;
    let prog = Program(prog);
    // SAFETY: `prog` is a live program; `src` and `file` outlive it (dropped after `prog`).
    let compiled = unsafe { nresult::compile_program(prog.0, options) };
    let log = program_log(&prog);
    if let Err(e) = compiled {
        let log = if log.trim().is_empty() {
            format!("{} (no log)", nvrtc_message(e))
        } else {
            log
        };
        return Err(compile_error(log));
    }
    if !log.trim().is_empty() {
        tracing::debug!(kernel = name, log = %log, "NVRTC log");
    }
    if cubin {
        let mut size = 0usize;
        // SAFETY: live, compiled program; `size` is a valid out-pointer.
        let code = unsafe { nsys::nvrtcGetCUBINSize(prog.0, &mut size) };
        code.result().map_err(|e| {
            compile_error(format!("nvrtcGetCUBINSize failed: {}", nvrtc_message(e)))
        })?;
        let mut bytes = vec![0u8; size];
        // SAFETY: `bytes` holds the `size` bytes NVRTC said the CUBIN has.
        let code = unsafe { nsys::nvrtcGetCUBIN(prog.0, bytes.as_mut_ptr().cast::<c_char>()) };
        code.result()
            .map_err(|e| compile_error(format!("nvrtcGetCUBIN failed: {}", nvrtc_message(e))))?;
        Ok(Code::Cubin(bytes))
    } else {
        // SAFETY: live, compiled program.
        let raw = unsafe { nresult::get_ptx(prog.0) }
            .map_err(|e| compile_error(format!("nvrtcGetPTX failed: {}", nvrtc_message(e))))?;
        let bytes: Vec<u8> = raw
            .into_iter()
            .map(|c| c as u8)
            .take_while(|&b| b != 0)
            .collect();
        Ok(Code::Ptx(String::from_utf8_lossy(&bytes).into_owned()))
    }
}

fn program_log(prog: &Program) -> String {
    // SAFETY: live program.
    match unsafe { nresult::get_program_log(prog.0) } {
        Ok(raw) => {
            let bytes: Vec<u8> = raw
                .into_iter()
                .map(|c| c as u8)
                .take_while(|&b| b != 0)
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Err(e) => format!("(could not read the NVRTC log: {})", nvrtc_message(e)),
    }
}

impl Kernel {
    /// The entry point's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The NVRTC target it was compiled for (`sm_90`, or `compute_XY` when JIT-compiled).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The device the kernel is loaded on.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// True when both kernels come from the same loaded module (same source, options, device).
    pub fn same_module(&self, other: &Kernel) -> bool {
        Arc::ptr_eq(&self.module, &other.module)
    }

    /// Starts a launch of this kernel on `stream`; add arguments in the kernel's parameter order,
    /// then call [`Launch::launch`].
    pub fn launch_builder<'a>(&'a self, stream: &'a Stream) -> Launch<'a> {
        Launch {
            args: stream.inner.launch_builder(&self.func),
            kernel: self,
            stream,
        }
    }
}

/// A kernel launch being assembled: arguments in order, then [`launch`](Launch::launch).
pub struct Launch<'a> {
    args: LaunchArgs<'a>,
    kernel: &'a Kernel,
    stream: &'a Stream,
}

impl std::fmt::Debug for Launch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launch")
            .field("kernel", &self.kernel.name)
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

/// The argument pushed for an empty device buffer: a null pointer.
static NULL_DEVICE_PTR: u64 = 0;

impl<'a> Launch<'a> {
    /// Passes a value by copy: a number, a `#[repr(C)]` struct implementing [`DeviceRepr`],
    /// or a raw device address as `u64` (for a `T*` parameter).
    pub fn arg<T: DeviceRepr>(&mut self, value: &'a T) -> &mut Self {
        self.args.arg(value);
        self
    }

    /// Passes a device buffer the kernel only reads (a `const T*` parameter). On other streams
    /// than the buffer's, the launch waits for the buffer's earlier writers.
    pub fn arg_buffer<T>(&mut self, buf: &'a DeviceBuffer<T>) -> &mut Self {
        match &buf.slice {
            Some(slice) => self.args.arg(slice),
            None => self.args.arg(&NULL_DEVICE_PTR),
        };
        self
    }

    /// Passes a device buffer the kernel writes (a `T*` parameter). On other streams than the
    /// buffer's, the launch waits for the buffer's earlier readers and writers.
    pub fn arg_buffer_mut<T>(&mut self, buf: &'a mut DeviceBuffer<T>) -> &mut Self {
        match &mut buf.slice {
            Some(slice) => self.args.arg(slice),
            None => self.args.arg(&NULL_DEVICE_PTR),
        };
        self
    }

    /// Queues the kernel on the stream with grid and block sizes from `cfg`. Returns when the
    /// launch is queued, not when the kernel has run (synchronize the stream for that).
    ///
    /// # Safety
    ///
    /// The arguments must match the kernel's parameters in number, order and type; every
    /// address the kernel reaches (buffers, raw `u64` addresses of mapped, registered or managed
    /// memory) must stay valid until the kernel has finished, the kernel must stay within those
    /// allocations, and the host must not read memory the kernel writes, or write memory it
    /// reads, until the kernel has finished.
    pub unsafe fn launch(&mut self, cfg: LaunchConfig) -> Result<()> {
        if !self.kernel.gpu.same_device(self.stream.gpu()) {
            return Err(GpuError::InvalidArgument {
                what: format!(
                    "kernel `{}` is loaded on device {} but the stream is on device {}",
                    self.kernel.name,
                    self.kernel.gpu.ordinal(),
                    self.stream.gpu().ordinal()
                ),
            });
        }
        // SAFETY: the caller upholds the argument and lifetime contract above.
        unsafe { self.args.launch(cfg) }.during("cuLaunchKernel")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_prefers_exact_cubin() {
        let supported = [75, 80, 86, 87, 89, 90, 100, 120];
        assert_eq!(choose_target((9, 0), &supported).as_deref(), Some("sm_90"));
        assert_eq!(choose_target((8, 6), &supported).as_deref(), Some("sm_86"));
        assert_eq!(
            choose_target((12, 0), &supported).as_deref(),
            Some("sm_120")
        );
    }

    #[test]
    fn target_falls_back_to_older_ptx() {
        let supported = [75, 80, 90];
        assert_eq!(
            choose_target((10, 3), &supported).as_deref(),
            Some("compute_90")
        );
        assert_eq!(
            choose_target((8, 9), &supported).as_deref(),
            Some("compute_80")
        );
        assert_eq!(choose_target((7, 0), &supported), None);
    }
}
