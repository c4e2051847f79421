//! gRPC over unix sockets, the only transport DMI uses (devices.md §5.2):
//! edgecore listens on its DMI socket, each mapper on its own.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use thiserror::Error;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::service::Routes;
use tonic::transport::{Channel, Endpoint, Server, Uri};

/// Why a socket could not be connected to or listened on.
#[derive(Debug, Error)]
pub enum SocketError {
    /// The socket's directory could not be created, or a stale socket file
    /// could not be removed.
    #[error("cannot prepare the socket path {path}")]
    Prepare {
        /// The socket's path.
        path: PathBuf,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// Listening on the socket failed.
    #[error("cannot listen on {path}")]
    Bind {
        /// The socket's path.
        path: PathBuf,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// Connecting to the socket failed.
    #[error("cannot connect to {path}")]
    Connect {
        /// The socket's path.
        path: PathBuf,
        /// What failed.
        #[source]
        source: tonic::transport::Error,
    },
}

/// The endpoint every unix-socket channel uses: the URI only names the
/// HTTP/2 authority, the connector ignores it.
fn endpoint() -> Endpoint {
    Endpoint::from_static("http://localhost")
}

/// Connects a channel to the gRPC server listening on the unix socket at
/// `path`, failing at once if nobody listens there.
pub async fn connect(path: impl AsRef<Path>) -> Result<Channel, SocketError> {
    let path = path.as_ref().to_path_buf();
    let target = path.clone();
    endpoint()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let target = target.clone();
            async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(target).await?)) }
        }))
        .await
        .map_err(|source| SocketError::Connect { path, source })
}

/// A channel to the gRPC server on the unix socket at `path` that connects
/// on first use and reconnects after failures: calls fail while nobody
/// listens and succeed once the server is (back) up.
pub fn connect_lazy(path: impl AsRef<Path>) -> Channel {
    let target = path.as_ref().to_path_buf();
    endpoint().connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
        let target = target.clone();
        async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(target).await?)) }
    }))
}

/// Listens on the unix socket at `path`, creating its directory and
/// removing a stale socket file first, as KubeEdge does.
///
/// Must be called within a Tokio runtime.
pub fn bind(path: impl AsRef<Path>) -> Result<UnixListenerStream, SocketError> {
    let path = path.as_ref();
    let prepare = |source| SocketError::Prepare {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(prepare)?;
    }
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(prepare(error)),
        _ => {}
    }
    let listener = UnixListener::bind(path).map_err(|source| SocketError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(UnixListenerStream::new(listener))
}

/// Serves `routes` on the unix socket at `path` until `shutdown` completes.
///
/// The socket is bound (see [`bind`]) before this returns, so clients may
/// connect as soon as it has; the returned future serves and ends when
/// `shutdown` does or serving fails.
pub fn serve<F>(
    routes: Routes,
    path: &Path,
    shutdown: F,
) -> Result<impl Future<Output = Result<(), tonic::transport::Error>> + Send + use<F>, SocketError>
where
    F: Future<Output = ()> + Send,
{
    let incoming = bind(path)?;
    Ok(Server::builder()
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1beta1::device_manager_service_client::DeviceManagerServiceClient;
    use crate::v1beta1::device_manager_service_server::{
        DeviceManagerService, DeviceManagerServiceServer,
    };
    use crate::v1beta1::*;
    use tonic::{Request, Response, Status};

    /// Answers registrations with one device named after the mapper.
    struct Echo;

    #[tonic::async_trait]
    impl DeviceManagerService for Echo {
        async fn mapper_register(
            &self,
            request: Request<MapperRegisterRequest>,
        ) -> Result<Response<MapperRegisterResponse>, Status> {
            let mapper = request.into_inner().mapper.unwrap_or_default();
            Ok(Response::new(MapperRegisterResponse {
                model_list: vec![],
                device_list: vec![Device {
                    name: mapper.name,
                    ..Default::default()
                }],
            }))
        }

        async fn report_device_status(
            &self,
            _: Request<ReportDeviceStatusRequest>,
        ) -> Result<Response<ReportDeviceStatusResponse>, Status> {
            Ok(Response::new(ReportDeviceStatusResponse {}))
        }

        async fn report_device_states(
            &self,
            _: Request<ReportDeviceStatesRequest>,
        ) -> Result<Response<ReportDeviceStatesResponse>, Status> {
            Ok(Response::new(ReportDeviceStatesResponse {}))
        }
    }

    #[tokio::test]
    async fn a_client_reaches_a_server_on_a_socket_replacing_a_stale_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub").join("dmi.sock");
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, b"stale").expect("stale file");

        let lazy = DeviceManagerServiceClient::new(connect_lazy(&path));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = serve(
            Routes::new(DeviceManagerServiceServer::new(Echo)),
            &path,
            async {
                let _ = stopped.await;
            },
        )
        .expect("serve");
        let server = tokio::spawn(server);

        let mut client = DeviceManagerServiceClient::new(connect(&path).await.expect("connect"));
        for client in [&mut client, &mut lazy.clone()] {
            let answer = client
                .mapper_register(MapperRegisterRequest {
                    with_data: true,
                    mapper: Some(MapperInfo {
                        name: "m".into(),
                        ..Default::default()
                    }),
                })
                .await
                .expect("register")
                .into_inner();
            assert_eq!(answer.device_list[0].name, "m");
        }

        stop.send(()).expect("stop");
        server.await.expect("join").expect("served");
    }

    #[tokio::test]
    async fn connecting_to_a_missing_socket_fails_with_its_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("none.sock");
        let error = connect(&path).await.expect_err("nobody listens");
        assert!(matches!(&error, SocketError::Connect { path: p, .. } if *p == path));
    }
}
