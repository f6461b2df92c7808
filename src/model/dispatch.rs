//! The one dispatch point for work on a model: a device value and a set of dimensions in, a typed
//! backend and a typed shape out. Training, the benchmarks, sampling and scoring are each written
//! once as a [`ModelJob`], generic over both, and [`run_model`] picks the instantiation.

use super::ModelDims;
use super::shape::{Shape, ShapeError, ShapeJob, with_shape};
use crate::engine::{Backend, Device, DeviceError, DeviceInfo, OnDevice};

/// Work on a model of some shape, on some backend.
pub trait ModelJob {
    type Output;
    fn run<S: Shape, B: Backend<Float = f32>>(
        self,
        shape: S,
        backend: B,
        device: &DeviceInfo,
    ) -> Self::Output;
}

/// Why a model job could not start: dimensions no model can have, or a device this build or
/// machine cannot provide.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Shape(#[from] ShapeError),
    #[error(transparent)]
    Device(#[from] DeviceError),
}

/// Runs `job` with the typed shape of `dims` on the backend of `device`. The shape is checked
/// first, so bad dimensions are reported without touching a GPU.
pub fn run_model<J, T, E>(device: Device, dims: ModelDims, job: J) -> Result<T, E>
where
    J: ModelJob<Output = Result<T, E>>,
    E: From<DispatchError>,
{
    let on_device = with_shape(dims, WithShape { device, job }).map_err(DispatchError::from)?;
    on_device.map_err(DispatchError::from)?
}

/// The job once its shape is known: asks the device for its backend.
struct WithShape<J> {
    device: Device,
    job: J,
}

impl<J: ModelJob> ShapeJob for WithShape<J> {
    type Output = Result<J::Output, DeviceError>;
    fn run<S: Shape>(self, shape: S) -> Self::Output {
        self.device.run(WithBackend {
            shape,
            job: self.job,
        })
    }
}

/// The job once its shape and backend are known.
struct WithBackend<S, J> {
    shape: S,
    job: J,
}

impl<S: Shape, J: ModelJob> OnDevice for WithBackend<S, J> {
    type Output = J::Output;
    fn run<B: Backend<Float = f32>>(self, backend: B, info: &DeviceInfo) -> J::Output {
        self.job.run(self.shape, backend, info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Llama, LlamaConfig, Preset};

    struct CountParams;
    impl ModelJob for CountParams {
        type Output = anyhow::Result<(usize, String)>;
        fn run<S: Shape, B: Backend<Float = f32>>(
            self,
            shape: S,
            backend: B,
            device: &DeviceInfo,
        ) -> Self::Output {
            let model = Llama::new(backend, shape, LlamaConfig::default(), 1)?;
            Ok((model.num_params(), device.name.clone()))
        }
    }

    #[test]
    fn a_job_runs_on_the_named_device_with_the_typed_shape() {
        let dims = Preset::Stories260K.dims();
        let (params, device) = run_model(Device::Cpu, dims, CountParams).unwrap();
        assert_eq!(device, "cpu");
        assert!(params > 200_000 && params < 300_000, "{params}");
    }

    #[test]
    fn bad_dimensions_are_reported_before_the_device_is_asked() {
        let dims = ModelDims {
            n_heads: 7,
            ..Preset::Stories260K.dims()
        };
        // A CUDA device would be an error in this build; the shape's error comes first.
        let error = run_model(Device::Cuda(0), dims, CountParams).unwrap_err();
        assert!(
            matches!(
                error.downcast_ref::<DispatchError>(),
                Some(DispatchError::Shape(_))
            ),
            "{error:?}"
        );
    }
}
