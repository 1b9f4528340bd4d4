//! Vulkan devices through the Vulkan loader (`libvulkan.so.1`), opened at run time by `ash`
//! (feature `loaded`: no link-time dependency, so r1d starts on a machine without Vulkan).
//!
//! Vulkan is what finds AMD and Intel GPUs (and NVIDIA ones without NVML) for the planner: name,
//! PCI vendor, device type, driver, memory heaps and — where the driver offers
//! `VK_EXT_memory_budget` — the free memory per heap. Every device is *listed* ([`probe`]); only
//! GPUs are *planned* ([`planned_gpus`]): a CPU device such as Mesa's lavapipe runs on the same
//! cores and RAM the planner already counts, and a GPU a native probe (NVML, amdgpu sysfs) found
//! is not counted twice.
//!
//! Memory follows llama.cpp's Vulkan backend (`ggml_backend_vk_get_device_memory`), so the
//! planner sees the numbers the backend will use: a discrete GPU's memory is the sum of its
//! `DEVICE_LOCAL` heaps, an integrated GPU's the sum of all heaps; free is `heapBudget −
//! heapUsage` summed over those heaps with `VK_EXT_memory_budget`, else their whole size.
//! Sources: the Vulkan 1.3 specification, `VkPhysicalDeviceMemoryProperties` and
//! `VkPhysicalDeviceMemoryBudgetPropertiesEXT`; PCI vendor ids from the PCI-SIG list as the
//! Vulkan specification's `VkPhysicalDeviceProperties::vendorID` uses them.
//!
//! The loader and one instance are created once per process and kept (as NVML is): creating an
//! instance loads every installed driver, which is too slow to repeat at each hardware poll.

use std::ffi::CStr;
use std::sync::OnceLock;

use ash::vk;

use super::{Gpu, GpuVendor};

/// PCI vendor id of NVIDIA.
pub const VENDOR_NVIDIA: u32 = 0x10de;
/// PCI vendor id of AMD.
pub const VENDOR_AMD: u32 = 0x1002;
/// PCI vendor id of Intel.
pub const VENDOR_INTEL: u32 = 0x8086;
/// Khronos vendor id of Mesa (`VK_VENDOR_ID_MESA`), used by its software devices (lavapipe).
pub const VENDOR_MESA: u32 = 0x10005;

/// A Vulkan physical device's type (`VkPhysicalDeviceType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceType {
    /// A GPU with its own memory.
    Discrete,
    /// A GPU sharing the CPU's memory.
    Integrated,
    /// A GPU of a virtual machine.
    Virtual,
    /// Runs on the CPU (lavapipe, SwiftShader): listed, never planned.
    Cpu,
    /// Anything else the driver reports.
    Other,
}

impl DeviceType {
    /// `"discrete"`, `"integrated"`, `"virtual"`, `"cpu"` or `"other"`.
    pub fn name(self) -> &'static str {
        match self {
            DeviceType::Discrete => "discrete",
            DeviceType::Integrated => "integrated",
            DeviceType::Virtual => "virtual",
            DeviceType::Cpu => "cpu",
            DeviceType::Other => "other",
        }
    }

    fn from_vk(t: vk::PhysicalDeviceType) -> DeviceType {
        match t {
            vk::PhysicalDeviceType::DISCRETE_GPU => DeviceType::Discrete,
            vk::PhysicalDeviceType::INTEGRATED_GPU => DeviceType::Integrated,
            vk::PhysicalDeviceType::VIRTUAL_GPU => DeviceType::Virtual,
            vk::PhysicalDeviceType::CPU => DeviceType::Cpu,
            _ => DeviceType::Other,
        }
    }
}

/// One memory heap of a device (`VkMemoryHeap`, with its budget where known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryHeap {
    /// Size of the heap (bytes).
    pub size_bytes: u64,
    /// `VK_MEMORY_HEAP_DEVICE_LOCAL_BIT`: the device's own memory (VRAM on a discrete GPU).
    pub device_local: bool,
    /// What this process may allocate in the heap in all (bytes), from `VK_EXT_memory_budget`.
    pub budget_bytes: Option<u64>,
    /// What this process already holds in the heap (bytes), from `VK_EXT_memory_budget`.
    pub usage_bytes: Option<u64>,
}

/// One Vulkan physical device, as the loader reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VulkanDevice {
    /// Index in `vkEnumeratePhysicalDevices` order — the index `GGML_VK_VISIBLE_DEVICES` takes.
    pub index: u32,
    /// `deviceName`, e.g. `AMD Radeon RX 7900 XTX (RADV NAVI31)` or `llvmpipe (LLVM 15.0.6, 256 bits)`.
    pub name: String,
    /// PCI vendor id (`vendorID`): see [`VENDOR_NVIDIA`], [`VENDOR_AMD`], [`VENDOR_INTEL`], [`VENDOR_MESA`].
    pub vendor_id: u32,
    /// The device's type.
    pub device_type: DeviceType,
    /// Vulkan version the device supports, `major.minor.patch`.
    pub api_version: String,
    /// Driver name and version string (`VkPhysicalDeviceDriverProperties`, Vulkan 1.2), e.g.
    /// `radv Mesa 24.2.8`; `None` on older drivers.
    pub driver: Option<String>,
    /// `deviceUUID` (Vulkan 1.1): the same GPU seen through two drivers has the same one.
    pub uuid: Option<[u8; 16]>,
    /// Memory heaps in heap order.
    pub heaps: Vec<MemoryHeap>,
    /// Why the planner does not use this device, set by [`planned_gpus`]; `None` = planned (or
    /// not decided yet).
    pub not_planned: Option<String>,
}

impl VulkanDevice {
    /// The vendor's name: `nvidia`, `amd`, `intel`, `mesa`, else the id in hex.
    pub fn vendor_name(&self) -> String {
        match self.vendor_id {
            VENDOR_NVIDIA => "nvidia".into(),
            VENDOR_AMD => "amd".into(),
            VENDOR_INTEL => "intel".into(),
            VENDOR_MESA => "mesa".into(),
            other => format!("{other:#06x}"),
        }
    }

    /// The heaps llama.cpp's Vulkan backend counts as the device's memory: all of an integrated
    /// GPU's, else the `DEVICE_LOCAL` ones.
    fn counted_heaps(&self) -> impl Iterator<Item = &MemoryHeap> {
        let all = self.device_type == DeviceType::Integrated;
        self.heaps.iter().filter(move |h| all || h.device_local)
    }

    /// The device's memory (bytes), as llama.cpp's Vulkan backend counts it.
    pub fn memory_total_bytes(&self) -> u64 {
        self.counted_heaps().map(|h| h.size_bytes).sum()
    }

    /// The device's free memory (bytes): `budget − usage` of each counted heap with
    /// `VK_EXT_memory_budget`, else the heap's size (Vulkan gives no better number).
    pub fn memory_free_bytes(&self) -> u64 {
        self.counted_heaps()
            .map(|h| match (h.budget_bytes, h.usage_bytes) {
                (Some(budget), Some(usage)) => budget.saturating_sub(usage).min(h.size_bytes),
                _ => h.size_bytes,
            })
            .sum()
    }

    /// Whether free memory is measured (`VK_EXT_memory_budget`) rather than assumed.
    pub fn has_memory_budget(&self) -> bool {
        self.heaps.iter().any(|h| h.budget_bytes.is_some())
    }

    /// Why the planner would not plan this device, given the GPUs native probes found, leaving
    /// duplicates aside (see [`planned_gpus`]).
    fn excluded_because(&self, native: &[Gpu]) -> Option<&'static str> {
        if self.device_type == DeviceType::Cpu {
            return Some("a CPU device: its cores and RAM are planned as the CPU");
        }
        if self.memory_total_bytes() == 0 {
            return Some("no device memory reported");
        }
        let covered = match self.vendor_id {
            VENDOR_NVIDIA => native.iter().any(|g| g.vendor == GpuVendor::Nvidia),
            VENDOR_AMD => native.iter().any(|g| g.vendor == GpuVendor::Amd),
            _ => false,
        };
        covered.then_some("found by the vendor's own probe (NVML or amdgpu sysfs)")
    }
}

/// The GPUs among `devices` the planner should see in addition to `native` (those NVML and the
/// amdgpu sysfs probe found): no CPU devices, nothing without memory, no vendor a native probe
/// already covers (its numbers are better: per-process free VRAM, bandwidth), and each GPU once
/// even when two drivers expose it (same `deviceUUID`). Sets each device's
/// [`VulkanDevice::not_planned`]. Pure.
pub fn planned_gpus(devices: &mut [VulkanDevice], native: &[Gpu]) -> Vec<Gpu> {
    let mut seen: Vec<([u8; 16], u32)> = Vec::new();
    let mut gpus = Vec::new();
    for d in devices.iter_mut() {
        d.not_planned = d.excluded_because(native).map(str::to_owned);
        if d.not_planned.is_some() {
            continue;
        }
        if let Some(uuid) = d.uuid {
            if let Some((_, first)) = seen.iter().find(|(u, _)| *u == uuid) {
                d.not_planned = Some(format!(
                    "the same GPU as Vulkan device {first} (another driver)"
                ));
                continue;
            }
            seen.push((uuid, d.index));
        }
        gpus.push(Gpu {
            vendor: match d.vendor_id {
                VENDOR_NVIDIA => GpuVendor::Nvidia,
                VENDOR_AMD => GpuVendor::Amd,
                VENDOR_INTEL => GpuVendor::Intel,
                _ => GpuVendor::Other,
            },
            name: d.name.clone(),
            vram_total_bytes: d.memory_total_bytes(),
            vram_free_bytes: d.memory_free_bytes(),
            bandwidth_bytes_per_s: None,
            compute_capability: None,
            driver: d.driver.clone(),
        });
    }
    gpus
}

/// `major.minor.patch` of a packed Vulkan version number.
fn version_string(v: u32) -> String {
    format!(
        "{}.{}.{}",
        vk::api_version_major(v),
        vk::api_version_minor(v),
        vk::api_version_patch(v)
    )
}

/// The process's loader and instance; `Err` says why there is none (logged once at debug).
fn instance() -> Result<&'static (ash::Entry, ash::Instance, u32), &'static str> {
    static INSTANCE: OnceLock<Result<(ash::Entry, ash::Instance, u32), String>> = OnceLock::new();
    INSTANCE
        .get_or_init(|| {
            let result = create_instance();
            if let Err(e) = &result {
                tracing::debug!("no Vulkan device: {e}");
            }
            result
        })
        .as_ref()
        .map_err(String::as_str)
}

fn create_instance() -> Result<(ash::Entry, ash::Instance, u32), String> {
    // SAFETY: loading the Vulkan loader runs its initialisers; it is the system's libvulkan,
    // loaded once and never unloaded (the `Entry` lives in a static).
    let entry = unsafe { ash::Entry::load() }
        .map_err(|e| format!("the Vulkan loader (libvulkan.so.1) is not available: {e}"))?;
    // SAFETY: `entry` holds valid loader function pointers.
    let loader_version = unsafe { entry.try_enumerate_instance_version() }
        .map_err(|e| format!("vkEnumerateInstanceVersion failed: {e}"))?
        .unwrap_or(vk::API_VERSION_1_0);
    // Ask for 1.1 where the loader has it: vkGetPhysicalDeviceProperties2 and
    // vkGetPhysicalDeviceMemoryProperties2 (for the budget) are core there.
    let api = if loader_version >= vk::API_VERSION_1_1 {
        vk::API_VERSION_1_1
    } else {
        vk::API_VERSION_1_0
    };
    let app = vk::ApplicationInfo::default()
        .application_name(c"r1d")
        .api_version(api);
    let info = vk::InstanceCreateInfo::default().application_info(&app);
    // SAFETY: `info` and what it points to live across the call; no allocation callbacks.
    let instance = unsafe { entry.create_instance(&info, None) }
        .map_err(|e| format!("vkCreateInstance failed: {e}"))?;
    Ok((entry, instance, api))
}

/// Every Vulkan device the loader reports, CPU devices included; empty (with a debug line) when
/// there is no loader or no driver.
pub fn probe() -> Vec<VulkanDevice> {
    let Ok((_, instance, api)) = instance() else {
        return Vec::new();
    };
    // SAFETY: `instance` is a live instance, never destroyed.
    let physical = match unsafe { instance.enumerate_physical_devices() } {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!("vkEnumeratePhysicalDevices failed: {e}");
            return Vec::new();
        }
    };
    physical
        .into_iter()
        .enumerate()
        .map(|(index, pd)| describe(instance, *api, index as u32, pd))
        .collect()
}

/// Reads one device's properties, driver, UUID and heaps (with the budget where offered).
fn describe(
    instance: &ash::Instance,
    instance_api: u32,
    index: u32,
    pd: vk::PhysicalDevice,
) -> VulkanDevice {
    // SAFETY: `pd` comes from this instance's enumeration; the instance is alive.
    let props = unsafe { instance.get_physical_device_properties(pd) };
    let name = props
        .device_name_as_c_str()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("Vulkan device {index}"));
    let v11 = instance_api >= vk::API_VERSION_1_1 && props.api_version >= vk::API_VERSION_1_1;
    // SAFETY: as above; the returned vector is owned.
    let extensions =
        unsafe { instance.enumerate_device_extension_properties(pd) }.unwrap_or_default();
    let has_ext = |wanted: &CStr| {
        extensions
            .iter()
            .any(|e| e.extension_name_as_c_str().is_ok_and(|n| n == wanted))
    };
    let budget = v11 && has_ext(vk::EXT_MEMORY_BUDGET_NAME);

    let (mut driver, mut uuid) = (None, None);
    if v11 {
        let mut id = vk::PhysicalDeviceIDProperties::default();
        let mut drv = vk::PhysicalDeviceDriverProperties::default();
        let v12 = props.api_version >= vk::API_VERSION_1_2 || has_ext(c"VK_KHR_driver_properties");
        let mut props2 = vk::PhysicalDeviceProperties2::default().push_next(&mut id);
        if v12 {
            props2 = props2.push_next(&mut drv);
        }
        // SAFETY: the chained structs live across the call and have their sType set; the driver
        // struct is chained only where the device knows it.
        unsafe { instance.get_physical_device_properties2(pd, &mut props2) };
        uuid = Some(id.device_uuid);
        if v12 {
            let text = |s: Result<&CStr, _>| {
                s.ok()
                    .map(|s: &CStr| s.to_string_lossy().trim().to_owned())
                    .filter(|s| !s.is_empty())
            };
            driver = match (
                text(drv.driver_name_as_c_str()),
                text(drv.driver_info_as_c_str()),
            ) {
                (Some(n), Some(i)) => Some(format!("{n} {i}")),
                (n, i) => n.or(i),
            };
        }
    }

    let mut budget_props = vk::PhysicalDeviceMemoryBudgetPropertiesEXT::default();
    let memory = if v11 {
        let mut mem2 = vk::PhysicalDeviceMemoryProperties2::default();
        if budget {
            mem2 = mem2.push_next(&mut budget_props);
        }
        // SAFETY: as above; the budget struct is chained only when the extension is there.
        unsafe { instance.get_physical_device_memory_properties2(pd, &mut mem2) };
        mem2.memory_properties
    } else {
        // SAFETY: as above.
        unsafe { instance.get_physical_device_memory_properties(pd) }
    };
    let heaps = memory
        .memory_heaps_as_slice()
        .iter()
        .enumerate()
        .map(|(i, h)| MemoryHeap {
            size_bytes: h.size,
            device_local: h.flags.contains(vk::MemoryHeapFlags::DEVICE_LOCAL),
            budget_bytes: budget.then(|| budget_props.heap_budget[i]),
            usage_bytes: budget.then(|| budget_props.heap_usage[i]),
        })
        .collect();
    VulkanDevice {
        index,
        name,
        vendor_id: props.vendor_id,
        device_type: DeviceType::from_vk(props.device_type),
        api_version: version_string(props.api_version),
        driver,
        uuid,
        heaps,
        not_planned: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn heap(size: u64, device_local: bool, budget: Option<(u64, u64)>) -> MemoryHeap {
        MemoryHeap {
            size_bytes: size,
            device_local,
            budget_bytes: budget.map(|b| b.0),
            usage_bytes: budget.map(|b| b.1),
        }
    }

    fn device(vendor_id: u32, device_type: DeviceType, heaps: Vec<MemoryHeap>) -> VulkanDevice {
        VulkanDevice {
            index: 0,
            name: "dev".into(),
            vendor_id,
            device_type,
            api_version: "1.3.0".into(),
            driver: None,
            uuid: None,
            heaps,
            not_planned: None,
        }
    }

    /// A discrete card without resizable BAR: VRAM heap, system RAM heap, the 256 MiB BAR heap.
    /// VRAM is the two device-local heaps; free is budget − usage of each.
    #[test]
    fn discrete_gpu_counts_device_local_heaps_and_their_budget() {
        let d = device(
            VENDOR_AMD,
            DeviceType::Discrete,
            vec![
                heap(16 * GIB - 256 * (1 << 20), true, Some((15 * GIB, 2 * GIB))),
                heap(32 * GIB, false, Some((24 * GIB, 0))),
                heap(256 << 20, true, Some((256 << 20, 0))),
            ],
        );
        assert_eq!(d.memory_total_bytes(), 16 * GIB);
        assert_eq!(d.memory_free_bytes(), 13 * GIB + (256 << 20));
        assert!(d.has_memory_budget());
    }

    /// Without VK_EXT_memory_budget free memory is the heap size (as llama.cpp assumes too);
    /// a budget larger than the heap (drivers do report that) is clamped.
    #[test]
    fn without_budget_free_is_the_heap_and_a_budget_beyond_the_heap_is_clamped() {
        let plain = device(
            VENDOR_INTEL,
            DeviceType::Discrete,
            vec![heap(8 * GIB, true, None)],
        );
        assert_eq!(plain.memory_free_bytes(), 8 * GIB);
        assert!(!plain.has_memory_budget());
        let odd = device(
            VENDOR_INTEL,
            DeviceType::Discrete,
            vec![heap(8 * GIB, true, Some((9 * GIB, 0)))],
        );
        assert_eq!(odd.memory_free_bytes(), 8 * GIB);
    }

    /// An integrated GPU's memory is every heap (the CPU's RAM), as llama.cpp counts it.
    #[test]
    fn integrated_gpu_counts_every_heap() {
        let d = device(
            VENDOR_INTEL,
            DeviceType::Integrated,
            vec![heap(12 * GIB, true, None), heap(4 * GIB, false, None)],
        );
        assert_eq!(d.memory_total_bytes(), 16 * GIB);
    }

    #[test]
    fn lavapipe_is_listed_but_not_planned_and_native_probes_win_for_their_vendor() {
        let lavapipe = device(
            VENDOR_MESA,
            DeviceType::Cpu,
            vec![heap(24 * GIB, true, None)],
        );
        let nvidia = device(
            VENDOR_NVIDIA,
            DeviceType::Discrete,
            vec![heap(80 * GIB, true, None)],
        );
        let intel = device(
            VENDOR_INTEL,
            DeviceType::Discrete,
            vec![heap(16 * GIB, true, None)],
        );
        assert_eq!(lavapipe.vendor_name(), "mesa");

        let mut devices = [lavapipe, nvidia, intel];
        let none = planned_gpus(&mut devices, &[]);
        assert_eq!(
            none.iter().map(|g| g.vendor).collect::<Vec<_>>(),
            vec![GpuVendor::Nvidia, GpuVendor::Intel]
        );
        assert_eq!(none[1].vram_total_bytes, 16 * GIB);
        assert!(devices[0]
            .not_planned
            .as_deref()
            .unwrap()
            .contains("CPU device"));
        assert_eq!(devices[1].not_planned, None);

        // NVML already found the NVIDIA card: Vulkan adds only the Intel one.
        let nvml = planned_gpus(&mut devices, &none[..1]);
        assert_eq!(nvml.len(), 1);
        assert_eq!(nvml[0].vendor, GpuVendor::Intel);
        assert!(devices[1].not_planned.as_deref().unwrap().contains("NVML"));
    }

    /// RADV and AMDVLK installed together list one card twice, with the same deviceUUID.
    #[test]
    fn one_gpu_behind_two_drivers_is_planned_once() {
        let mut a = device(
            VENDOR_AMD,
            DeviceType::Discrete,
            vec![heap(24 * GIB, true, None)],
        );
        a.uuid = Some([7; 16]);
        let mut b = a.clone();
        b.index = 1;
        let mut devices = [a, b];
        assert_eq!(planned_gpus(&mut devices, &[]).len(), 1);
        assert_eq!(
            devices[1].not_planned.as_deref(),
            Some("the same GPU as Vulkan device 0 (another driver)")
        );
    }

    #[test]
    fn version_strings_unpack() {
        assert_eq!(
            version_string(vk::make_api_version(0, 1, 3, 239)),
            "1.3.239"
        );
    }

    /// On the machine the tests run on, whatever it has: never a panic, sane numbers.
    #[test]
    fn this_machines_vulkan_probe_never_fails() {
        for d in probe() {
            assert!(
                d.memory_free_bytes() <= d.memory_total_bytes() || d.memory_total_bytes() == 0,
                "{d:?}"
            );
            assert!(!d.name.is_empty());
        }
    }
}
