//! etcd's Auth service, as a cluster that has authentication switched off answers it.
//!
//! quorumkv has no users, roles or tokens yet. So:
//! - `AuthStatus` says disabled, and `AuthDisable` succeeds (it is already off), as on an
//!   etcd whose authentication is off.
//! - `Authenticate` answers etcd's own "etcdserver: authentication is not enabled"
//!   (FailedPrecondition): etcd clients given a user name (`etcdctl --user`) recognise it and
//!   carry on without a token, exactly as against such an etcd.
//! - Everything that would manage users, roles or switch authentication on answers
//!   Unimplemented with a message that says so, rather than pretending to store a user.

use quorumkv_etcd_proto::etcdserverpb::auth_server::Auth;
use quorumkv_etcd_proto::etcdserverpb::{
    AuthDisableRequest, AuthDisableResponse, AuthEnableRequest, AuthEnableResponse,
    AuthRoleAddRequest, AuthRoleAddResponse, AuthRoleDeleteRequest, AuthRoleDeleteResponse,
    AuthRoleGetRequest, AuthRoleGetResponse, AuthRoleGrantPermissionRequest,
    AuthRoleGrantPermissionResponse, AuthRoleListRequest, AuthRoleListResponse,
    AuthRoleRevokePermissionRequest, AuthRoleRevokePermissionResponse, AuthStatusRequest,
    AuthStatusResponse, AuthUserAddRequest, AuthUserAddResponse, AuthUserChangePasswordRequest,
    AuthUserChangePasswordResponse, AuthUserDeleteRequest, AuthUserDeleteResponse,
    AuthUserGetRequest, AuthUserGetResponse, AuthUserGrantRoleRequest, AuthUserGrantRoleResponse,
    AuthUserListRequest, AuthUserListResponse, AuthUserRevokeRoleRequest,
    AuthUserRevokeRoleResponse, AuthenticateRequest, AuthenticateResponse,
};
use tonic::{Status, async_trait};

use super::Api;

/// The message of every call that needs authentication support.
pub const AUTH_UNSUPPORTED: &str = "quorumkv: authentication is not supported by quorumkv yet \
     (no users or roles); the cluster serves every client without authentication";

/// etcd's answer to `Authenticate` while authentication is off (clients match on it).
pub const AUTH_NOT_ENABLED: &str = "etcdserver: authentication is not enabled";

/// The Auth service.
pub struct AuthService {
    api: Api,
}

impl AuthService {
    /// An Auth service over `api`.
    pub fn new(api: Api) -> Self {
        Self { api }
    }
}

fn unsupported() -> Status {
    Status::unimplemented(AUTH_UNSUPPORTED)
}

/// Implements `Auth` with the calls written out below plus, for each listed method, an
/// answer that authentication is not supported. The whole impl comes from one macro so that
/// `async_trait` sees every method.
macro_rules! auth_service {
    ($($method:ident($req:ty) -> $resp:ty;)*) => {
        #[async_trait]
        impl Auth for AuthService {
            async fn auth_status(
                &self,
                _req: tonic::Request<AuthStatusRequest>,
            ) -> Result<tonic::Response<AuthStatusResponse>, Status> {
                Ok(tonic::Response::new(AuthStatusResponse {
                    header: Some(self.api.header(0)),
                    enabled: false,
                    auth_revision: 0,
                }))
            }

            async fn auth_disable(
                &self,
                _req: tonic::Request<AuthDisableRequest>,
            ) -> Result<tonic::Response<AuthDisableResponse>, Status> {
                Ok(tonic::Response::new(AuthDisableResponse { header: Some(self.api.header(0)) }))
            }

            async fn authenticate(
                &self,
                _req: tonic::Request<AuthenticateRequest>,
            ) -> Result<tonic::Response<AuthenticateResponse>, Status> {
                Err(Status::failed_precondition(AUTH_NOT_ENABLED))
            }

            $(
                async fn $method(
                    &self,
                    _req: tonic::Request<$req>,
                ) -> Result<tonic::Response<$resp>, Status> {
                    Err(unsupported())
                }
            )*
        }
    };
}

auth_service! {
    auth_enable(AuthEnableRequest) -> AuthEnableResponse;
    user_add(AuthUserAddRequest) -> AuthUserAddResponse;
    user_get(AuthUserGetRequest) -> AuthUserGetResponse;
    user_list(AuthUserListRequest) -> AuthUserListResponse;
    user_delete(AuthUserDeleteRequest) -> AuthUserDeleteResponse;
    user_change_password(AuthUserChangePasswordRequest) -> AuthUserChangePasswordResponse;
    user_grant_role(AuthUserGrantRoleRequest) -> AuthUserGrantRoleResponse;
    user_revoke_role(AuthUserRevokeRoleRequest) -> AuthUserRevokeRoleResponse;
    role_add(AuthRoleAddRequest) -> AuthRoleAddResponse;
    role_get(AuthRoleGetRequest) -> AuthRoleGetResponse;
    role_list(AuthRoleListRequest) -> AuthRoleListResponse;
    role_delete(AuthRoleDeleteRequest) -> AuthRoleDeleteResponse;
    role_grant_permission(AuthRoleGrantPermissionRequest) -> AuthRoleGrantPermissionResponse;
    role_revoke_permission(AuthRoleRevokePermissionRequest) -> AuthRoleRevokePermissionResponse;
}
