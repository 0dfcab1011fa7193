export {
  Buffer,
  type BufferKind,
  Device,
  type DeviceInfo,
  type DeviceMemory,
  type DeviceOpenOptions,
  type GatherJob,
  listDevices,
  VARIANT_CHOICES,
  type VariantChoice,
  variantChoice,
  type VariantSet,
} from "./device.ts";
export {
  type Binding,
  CommandList,
  type CopyRegion,
  type DispatchTime,
  type Queue,
  type RecordCounts,
  TIMESTAMP_SLOTS,
} from "./commands.ts";
export { type BindingKind, Kernel, type KernelOptions, TEXEL_BYTES } from "./kernel.ts";
export { rankRows } from "./select.ts";
export {
  MAX_PUSH_BYTES,
  type PushFields,
  PushLayout,
  pushLayout,
  type PushScalar,
  type PushValues,
} from "./push.ts";
