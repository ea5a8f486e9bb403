"""The GPU's SM clock, power and clock-limit reasons, sampled through NVML (ctypes on libnvidia-ml, no extra
package) while a measurement runs. The H100 here runs compute-bound decode configs at its 700 W power cap, where
the SM clock falls to ~1.45-1.65 GHz of 1.98: a compute-bound figure is only comparable with its clock.

    monitor = GpuMonitor.open(torch.device("cuda"))   # None where NVML is missing
    monitor.start(); ...; stats = monitor.stop()  # {"sm_mhz": median, "min_sm_mhz", "power_w": median,
                                                  #  "limits": "sw-power-cap", "max_temp_c"}

The SM clock is read as it is; power as NVML reports it, which the driver averages over about a second.
"""
import ctypes
import statistics
import threading
import time

NVML_CLOCK_SM = 1
NVML_TEMPERATURE_GPU = 0
# Bits of nvmlDeviceGetCurrentClocksEventReasons (formerly ...ThrottleReasons).
REASONS = {0x1: "idle", 0x2: "app-clocks", 0x4: "sw-power-cap", 0x8: "hw-slowdown", 0x20: "sw-thermal",
           0x40: "hw-thermal", 0x80: "hw-power-brake", 0x100: "display-clocks"}


def reasons_text(mask):
    return "+".join(name for bit, name in REASONS.items() if mask & bit) or "none"


class GpuMonitor:
    def __init__(self, nvml, handle, period_s):
        self.nvml, self.handle, self.period_s = nvml, handle, period_s
        reasons = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
        self.reasons_fn = reasons or getattr(nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None)
        self.samples, self.thread, self.running = [], None, False

    @classmethod
    def open(cls, device, period_s=0.005):
        """A monitor for the torch CUDA device (matched by PCI bus id), or None where NVML cannot be used."""
        try:
            import torch
            nvml = ctypes.CDLL("libnvidia-ml.so.1")
            if nvml.nvmlInit_v2() != 0:
                return None
            props = torch.cuda.get_device_properties(device)
            bus_id = f"{props.pci_domain_id:08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0".encode()
            handle = ctypes.c_void_p()
            if nvml.nvmlDeviceGetHandleByPciBusId_v2(bus_id, ctypes.byref(handle)) != 0:
                return None
            return cls(nvml, handle, period_s)
        except Exception:
            return None

    def sample(self):
        """(SM MHz, W, clock-limit reason bits, GPU temperature in C), or None where the clock cannot be read."""
        clock, power, mask, temp = ctypes.c_uint(), ctypes.c_uint(), ctypes.c_ulonglong(), ctypes.c_uint()
        if self.nvml.nvmlDeviceGetClockInfo(self.handle, NVML_CLOCK_SM, ctypes.byref(clock)) != 0:
            return None
        if self.nvml.nvmlDeviceGetPowerUsage(self.handle, ctypes.byref(power)) != 0:
            power.value = 0
        if self.reasons_fn is None or self.reasons_fn(self.handle, ctypes.byref(mask)) != 0:
            mask.value = 0
        if self.nvml.nvmlDeviceGetTemperature(self.handle, NVML_TEMPERATURE_GPU, ctypes.byref(temp)) != 0:
            temp.value = 0
        return clock.value, power.value / 1e3, mask.value, temp.value

    def _loop(self):
        while self.running:
            s = self.sample()
            if s is not None:
                self.samples.append(s)
            time.sleep(self.period_s)

    def start(self):
        self.samples, self.running = [], True
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def stop(self):
        self.running = False
        self.thread.join()
        if not self.samples:
            return {}
        mask = 0
        for s in self.samples:
            mask |= s[2]
        return dict(sm_mhz=statistics.median(s[0] for s in self.samples), min_sm_mhz=min(s[0] for s in self.samples),
                    power_w=round(statistics.median(s[1] for s in self.samples), 1), limits=reasons_text(mask & ~0x1),
                    max_temp_c=max(s[3] for s in self.samples))
