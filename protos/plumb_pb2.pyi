from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STATUS_UNSPECIFIED: _ClassVar[Status]
    IN_SYNC: _ClassVar[Status]
    REPAIRED: _ClassVar[Status]
    DRIFTED: _ClassVar[Status]
    FAILED: _ClassVar[Status]
    SKIPPED: _ClassVar[Status]
    UNKNOWN: _ClassVar[Status]

class Trigger(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRIGGER_UNSPECIFIED: _ClassVar[Trigger]
    PUSH: _ClassVar[Trigger]
    SCHEDULE: _ClassVar[Trigger]
    MANUAL: _ClassVar[Trigger]
    START: _ClassVar[Trigger]
    WATCH: _ClassVar[Trigger]
    PLAN: _ClassVar[Trigger]
STATUS_UNSPECIFIED: Status
IN_SYNC: Status
REPAIRED: Status
DRIFTED: Status
FAILED: Status
SKIPPED: Status
UNKNOWN: Status
TRIGGER_UNSPECIFIED: Trigger
PUSH: Trigger
SCHEDULE: Trigger
MANUAL: Trigger
START: Trigger
WATCH: Trigger
PLAN: Trigger

class EnrollRequest(_message.Message):
    __slots__ = ("token", "node_name", "csr_pem")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    token: str
    node_name: str
    csr_pem: bytes
    def __init__(self, token: _Optional[str] = ..., node_name: _Optional[str] = ..., csr_pem: _Optional[bytes] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("certificate_pem", "ca_pem", "node_name", "agent_port", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    AGENT_PORT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    certificate_pem: bytes
    ca_pem: bytes
    node_name: str
    agent_port: int
    labels: _containers.ScalarMap[str, str]
    def __init__(self, certificate_pem: _Optional[bytes] = ..., ca_pem: _Optional[bytes] = ..., node_name: _Optional[str] = ..., agent_port: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("hello", "report", "catalog_ack", "heartbeat", "renew", "dry_run_result")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    CATALOG_ACK_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    RENEW_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_RESULT_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    report: Report
    catalog_ack: CatalogAck
    heartbeat: Heartbeat
    renew: RenewRequest
    dry_run_result: DryRunResult
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., report: _Optional[_Union[Report, _Mapping]] = ..., catalog_ack: _Optional[_Union[CatalogAck, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., renew: _Optional[_Union[RenewRequest, _Mapping]] = ..., dry_run_result: _Optional[_Union[DryRunResult, _Mapping]] = ...) -> None: ...

class ServerMessage(_message.Message):
    __slots__ = ("catalog", "ack", "welcome", "renewed", "dry_run")
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    RENEWED_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    catalog: SignedCatalog
    ack: Ack
    welcome: Welcome
    renewed: Renewed
    dry_run: DryRun
    def __init__(self, catalog: _Optional[_Union[SignedCatalog, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., welcome: _Optional[_Union[Welcome, _Mapping]] = ..., renewed: _Optional[_Union[Renewed, _Mapping]] = ..., dry_run: _Optional[_Union[DryRun, _Mapping]] = ...) -> None: ...

class DryRun(_message.Message):
    __slots__ = ("id", "catalog")
    ID_FIELD_NUMBER: _ClassVar[int]
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    id: str
    catalog: SignedCatalog
    def __init__(self, id: _Optional[str] = ..., catalog: _Optional[_Union[SignedCatalog, _Mapping]] = ...) -> None: ...

class DryRunResult(_message.Message):
    __slots__ = ("id", "report", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: str
    report: Report
    error: str
    def __init__(self, id: _Optional[str] = ..., report: _Optional[_Union[Report, _Mapping]] = ..., error: _Optional[str] = ...) -> None: ...

class RenewRequest(_message.Message):
    __slots__ = ("csr_pem",)
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    csr_pem: bytes
    def __init__(self, csr_pem: _Optional[bytes] = ...) -> None: ...

class Renewed(_message.Message):
    __slots__ = ("certificate_pem", "error")
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    certificate_pem: bytes
    error: str
    def __init__(self, certificate_pem: _Optional[bytes] = ..., error: _Optional[str] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("conditions",)
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    conditions: _containers.RepeatedCompositeFieldContainer[NodeCondition]
    def __init__(self, conditions: _Optional[_Iterable[_Union[NodeCondition, _Mapping]]] = ...) -> None: ...

class NodeCondition(_message.Message):
    __slots__ = ("name", "detail", "since")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    detail: str
    since: float
    def __init__(self, name: _Optional[str] = ..., detail: _Optional[str] = ..., since: _Optional[float] = ...) -> None: ...

class CatalogAck(_message.Message):
    __slots__ = ("revision", "accepted", "error")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    revision: int
    accepted: bool
    error: str
    def __init__(self, revision: _Optional[int] = ..., accepted: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("latest_revision", "heartbeat_interval_s", "last_sequence", "server_time", "recorded_losses", "renew_within_s", "trusted_ca_pem")
    LATEST_REVISION_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_FIELD_NUMBER: _ClassVar[int]
    RECORDED_LOSSES_FIELD_NUMBER: _ClassVar[int]
    RENEW_WITHIN_S_FIELD_NUMBER: _ClassVar[int]
    TRUSTED_CA_PEM_FIELD_NUMBER: _ClassVar[int]
    latest_revision: int
    heartbeat_interval_s: float
    last_sequence: int
    server_time: float
    recorded_losses: _containers.RepeatedScalarFieldContainer[str]
    renew_within_s: float
    trusted_ca_pem: bytes
    def __init__(self, latest_revision: _Optional[int] = ..., heartbeat_interval_s: _Optional[float] = ..., last_sequence: _Optional[int] = ..., server_time: _Optional[float] = ..., recorded_losses: _Optional[_Iterable[str]] = ..., renew_within_s: _Optional[float] = ..., trusted_ca_pem: _Optional[bytes] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("node_name", "facts", "applied_revision", "agent_version", "sent_at", "losses", "conditions", "applied_sha256", "run_interval_s")
    class FactsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    FACTS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_REVISION_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    LOSSES_FIELD_NUMBER: _ClassVar[int]
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_SHA256_FIELD_NUMBER: _ClassVar[int]
    RUN_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    facts: _containers.ScalarMap[str, str]
    applied_revision: int
    agent_version: str
    sent_at: float
    losses: _containers.RepeatedCompositeFieldContainer[StateLoss]
    conditions: _containers.RepeatedCompositeFieldContainer[NodeCondition]
    applied_sha256: str
    run_interval_s: float
    def __init__(self, node_name: _Optional[str] = ..., facts: _Optional[_Mapping[str, str]] = ..., applied_revision: _Optional[int] = ..., agent_version: _Optional[str] = ..., sent_at: _Optional[float] = ..., losses: _Optional[_Iterable[_Union[StateLoss, _Mapping]]] = ..., conditions: _Optional[_Iterable[_Union[NodeCondition, _Mapping]]] = ..., applied_sha256: _Optional[str] = ..., run_interval_s: _Optional[float] = ...) -> None: ...

class StateLoss(_message.Message):
    __slots__ = ("id", "what", "count", "at", "detail", "received_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    WHAT_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    what: str
    count: int
    at: float
    detail: str
    received_at: float
    def __init__(self, id: _Optional[str] = ..., what: _Optional[str] = ..., count: _Optional[int] = ..., at: _Optional[float] = ..., detail: _Optional[str] = ..., received_at: _Optional[float] = ...) -> None: ...

class SignedCatalog(_message.Message):
    __slots__ = ("revision", "payload", "signature", "signer_pem")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SIGNER_PEM_FIELD_NUMBER: _ClassVar[int]
    revision: int
    payload: bytes
    signature: bytes
    signer_pem: bytes
    def __init__(self, revision: _Optional[int] = ..., payload: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., signer_pem: _Optional[bytes] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("report_id",)
    REPORT_ID_FIELD_NUMBER: _ClassVar[int]
    report_id: str
    def __init__(self, report_id: _Optional[str] = ...) -> None: ...

class Change(_message.Message):
    __slots__ = ("field", "observed", "desired", "diff")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_FIELD_NUMBER: _ClassVar[int]
    DESIRED_FIELD_NUMBER: _ClassVar[int]
    DIFF_FIELD_NUMBER: _ClassVar[int]
    field: str
    observed: str
    desired: str
    diff: str
    def __init__(self, field: _Optional[str] = ..., observed: _Optional[str] = ..., desired: _Optional[str] = ..., diff: _Optional[str] = ...) -> None: ...

class ResourceResult(_message.Message):
    __slots__ = ("id", "kind", "name", "manifest", "status", "changes", "error", "duration_s", "controls", "drift", "observed")
    class ObservedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    CONTROLS_FIELD_NUMBER: _ClassVar[int]
    DRIFT_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: str
    name: str
    manifest: str
    status: Status
    changes: _containers.RepeatedCompositeFieldContainer[Change]
    error: str
    duration_s: float
    controls: _containers.RepeatedScalarFieldContainer[str]
    drift: bool
    observed: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[str] = ..., name: _Optional[str] = ..., manifest: _Optional[str] = ..., status: _Optional[_Union[Status, str]] = ..., changes: _Optional[_Iterable[_Union[Change, _Mapping]]] = ..., error: _Optional[str] = ..., duration_s: _Optional[float] = ..., controls: _Optional[_Iterable[str]] = ..., drift: _Optional[bool] = ..., observed: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Report(_message.Message):
    __slots__ = ("id", "node_name", "revision", "noop", "trigger", "started_at", "finished_at", "results", "sequence", "truncated")
    ID_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    NOOP_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    id: str
    node_name: str
    revision: int
    noop: bool
    trigger: Trigger
    started_at: float
    finished_at: float
    results: _containers.RepeatedCompositeFieldContainer[ResourceResult]
    sequence: int
    truncated: bool
    def __init__(self, id: _Optional[str] = ..., node_name: _Optional[str] = ..., revision: _Optional[int] = ..., noop: _Optional[bool] = ..., trigger: _Optional[_Union[Trigger, str]] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., results: _Optional[_Iterable[_Union[ResourceResult, _Mapping]]] = ..., sequence: _Optional[int] = ..., truncated: _Optional[bool] = ...) -> None: ...

class CreateTokenRequest(_message.Message):
    __slots__ = ("labels", "ttl_s", "uses", "names", "name_pattern")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    USES_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    NAME_PATTERN_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.ScalarMap[str, str]
    ttl_s: int
    uses: int
    names: _containers.RepeatedScalarFieldContainer[str]
    name_pattern: str
    def __init__(self, labels: _Optional[_Mapping[str, str]] = ..., ttl_s: _Optional[int] = ..., uses: _Optional[int] = ..., names: _Optional[_Iterable[str]] = ..., name_pattern: _Optional[str] = ...) -> None: ...

class CreateTokenResponse(_message.Message):
    __slots__ = ("token", "expires_at", "uses", "enroll_address", "id", "names", "name_pattern", "reenroll")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    USES_FIELD_NUMBER: _ClassVar[int]
    ENROLL_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    NAME_PATTERN_FIELD_NUMBER: _ClassVar[int]
    REENROLL_FIELD_NUMBER: _ClassVar[int]
    token: str
    expires_at: float
    uses: int
    enroll_address: str
    id: str
    names: _containers.RepeatedScalarFieldContainer[str]
    name_pattern: str
    reenroll: bool
    def __init__(self, token: _Optional[str] = ..., expires_at: _Optional[float] = ..., uses: _Optional[int] = ..., enroll_address: _Optional[str] = ..., id: _Optional[str] = ..., names: _Optional[_Iterable[str]] = ..., name_pattern: _Optional[str] = ..., reenroll: _Optional[bool] = ...) -> None: ...

class TokenInfo(_message.Message):
    __slots__ = ("id", "labels", "names", "name_pattern", "reenroll", "created_at", "expires_at", "uses", "uses_left", "revoked_at", "state", "nodes")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    NAME_PATTERN_FIELD_NUMBER: _ClassVar[int]
    REENROLL_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    USES_FIELD_NUMBER: _ClassVar[int]
    USES_LEFT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    id: str
    labels: _containers.ScalarMap[str, str]
    names: _containers.RepeatedScalarFieldContainer[str]
    name_pattern: str
    reenroll: bool
    created_at: float
    expires_at: float
    uses: int
    uses_left: int
    revoked_at: float
    state: str
    nodes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., names: _Optional[_Iterable[str]] = ..., name_pattern: _Optional[str] = ..., reenroll: _Optional[bool] = ..., created_at: _Optional[float] = ..., expires_at: _Optional[float] = ..., uses: _Optional[int] = ..., uses_left: _Optional[int] = ..., revoked_at: _Optional[float] = ..., state: _Optional[str] = ..., nodes: _Optional[_Iterable[str]] = ...) -> None: ...

class ListTokensRequest(_message.Message):
    __slots__ = ("all",)
    ALL_FIELD_NUMBER: _ClassVar[int]
    all: bool
    def __init__(self, all: _Optional[bool] = ...) -> None: ...

class ListTokensResponse(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[TokenInfo]
    def __init__(self, tokens: _Optional[_Iterable[_Union[TokenInfo, _Mapping]]] = ...) -> None: ...

class RevokeTokenRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class RevokeTokenResponse(_message.Message):
    __slots__ = ("token", "already_revoked")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    ALREADY_REVOKED_FIELD_NUMBER: _ClassVar[int]
    token: TokenInfo
    already_revoked: bool
    def __init__(self, token: _Optional[_Union[TokenInfo, _Mapping]] = ..., already_revoked: _Optional[bool] = ...) -> None: ...

class ReenrollNodeRequest(_message.Message):
    __slots__ = ("node_name", "ttl_s")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    ttl_s: int
    def __init__(self, node_name: _Optional[str] = ..., ttl_s: _Optional[int] = ...) -> None: ...

class ManifestFile(_message.Message):
    __slots__ = ("path", "content")
    PATH_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    path: str
    content: str
    def __init__(self, path: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class PushRequest(_message.Message):
    __slots__ = ("files", "wait_s", "message", "rollout")
    FILES_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[ManifestFile]
    wait_s: float
    message: str
    rollout: RolloutSettings
    def __init__(self, files: _Optional[_Iterable[_Union[ManifestFile, _Mapping]]] = ..., wait_s: _Optional[float] = ..., message: _Optional[str] = ..., rollout: _Optional[_Union[RolloutSettings, _Mapping]] = ...) -> None: ...

class RolloutSettings(_message.Message):
    __slots__ = ("canary", "batch", "max_failures", "batch_timeout_s", "pause_after_canary")
    CANARY_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_FAILURES_FIELD_NUMBER: _ClassVar[int]
    BATCH_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    PAUSE_AFTER_CANARY_FIELD_NUMBER: _ClassVar[int]
    canary: str
    batch: str
    max_failures: str
    batch_timeout_s: float
    pause_after_canary: bool
    def __init__(self, canary: _Optional[str] = ..., batch: _Optional[str] = ..., max_failures: _Optional[str] = ..., batch_timeout_s: _Optional[float] = ..., pause_after_canary: _Optional[bool] = ...) -> None: ...

class RolloutNodeInfo(_message.Message):
    __slots__ = ("node_name", "batch", "state", "reason", "sent_at", "finished_at")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    batch: int
    state: str
    reason: str
    sent_at: float
    finished_at: float
    def __init__(self, node_name: _Optional[str] = ..., batch: _Optional[int] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., sent_at: _Optional[float] = ..., finished_at: _Optional[float] = ...) -> None: ...

class RolloutInfo(_message.Message):
    __slots__ = ("id", "revision", "previous_revision", "state", "settings", "max_failures", "kind", "author", "created_at", "updated_at", "reason", "nodes", "current")
    ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_REVISION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    MAX_FAILURES_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    id: int
    revision: int
    previous_revision: int
    state: str
    settings: RolloutSettings
    max_failures: int
    kind: str
    author: str
    created_at: float
    updated_at: float
    reason: str
    nodes: _containers.RepeatedCompositeFieldContainer[RolloutNodeInfo]
    current: bool
    def __init__(self, id: _Optional[int] = ..., revision: _Optional[int] = ..., previous_revision: _Optional[int] = ..., state: _Optional[str] = ..., settings: _Optional[_Union[RolloutSettings, _Mapping]] = ..., max_failures: _Optional[int] = ..., kind: _Optional[str] = ..., author: _Optional[str] = ..., created_at: _Optional[float] = ..., updated_at: _Optional[float] = ..., reason: _Optional[str] = ..., nodes: _Optional[_Iterable[_Union[RolloutNodeInfo, _Mapping]]] = ..., current: _Optional[bool] = ...) -> None: ...

class GetRolloutRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SteerRolloutRequest(_message.Message):
    __slots__ = ("action", "message", "wait_s")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    action: str
    message: str
    wait_s: float
    def __init__(self, action: _Optional[str] = ..., message: _Optional[str] = ..., wait_s: _Optional[float] = ...) -> None: ...

class SteerRolloutResponse(_message.Message):
    __slots__ = ("rollout", "rollback")
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    rollout: RolloutInfo
    rollback: PushResponse
    def __init__(self, rollout: _Optional[_Union[RolloutInfo, _Mapping]] = ..., rollback: _Optional[_Union[PushResponse, _Mapping]] = ...) -> None: ...

class ResourceNodes(_message.Message):
    __slots__ = ("resource_id", "nodes")
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    resource_id: str
    nodes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, resource_id: _Optional[str] = ..., nodes: _Optional[_Iterable[str]] = ...) -> None: ...

class ManifestError(_message.Message):
    __slots__ = ("file", "line", "field", "message")
    FILE_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    file: str
    line: int
    field: str
    message: str
    def __init__(self, file: _Optional[str] = ..., line: _Optional[int] = ..., field: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class PushResponse(_message.Message):
    __slots__ = ("revision", "errors", "targeted_nodes", "delivered_nodes", "undelivered_nodes", "refused_nodes", "unchanged", "unmatched_names", "unmatched_manifests", "released", "purging", "rollout_id")
    class RefusedNodesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REVISION_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    TARGETED_NODES_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_NODES_FIELD_NUMBER: _ClassVar[int]
    UNDELIVERED_NODES_FIELD_NUMBER: _ClassVar[int]
    REFUSED_NODES_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    UNMATCHED_NAMES_FIELD_NUMBER: _ClassVar[int]
    UNMATCHED_MANIFESTS_FIELD_NUMBER: _ClassVar[int]
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    PURGING_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    revision: int
    errors: _containers.RepeatedCompositeFieldContainer[ManifestError]
    targeted_nodes: _containers.RepeatedScalarFieldContainer[str]
    delivered_nodes: _containers.RepeatedScalarFieldContainer[str]
    undelivered_nodes: _containers.RepeatedScalarFieldContainer[str]
    refused_nodes: _containers.ScalarMap[str, str]
    unchanged: bool
    unmatched_names: _containers.RepeatedScalarFieldContainer[str]
    unmatched_manifests: _containers.RepeatedScalarFieldContainer[str]
    released: _containers.RepeatedCompositeFieldContainer[ResourceNodes]
    purging: _containers.RepeatedCompositeFieldContainer[ResourceNodes]
    rollout_id: int
    def __init__(self, revision: _Optional[int] = ..., errors: _Optional[_Iterable[_Union[ManifestError, _Mapping]]] = ..., targeted_nodes: _Optional[_Iterable[str]] = ..., delivered_nodes: _Optional[_Iterable[str]] = ..., undelivered_nodes: _Optional[_Iterable[str]] = ..., refused_nodes: _Optional[_Mapping[str, str]] = ..., unchanged: _Optional[bool] = ..., unmatched_names: _Optional[_Iterable[str]] = ..., unmatched_manifests: _Optional[_Iterable[str]] = ..., released: _Optional[_Iterable[_Union[ResourceNodes, _Mapping]]] = ..., purging: _Optional[_Iterable[_Union[ResourceNodes, _Mapping]]] = ..., rollout_id: _Optional[int] = ...) -> None: ...

class PlanRequest(_message.Message):
    __slots__ = ("files", "target", "wait_s", "remove_manifest", "purge")
    FILES_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    REMOVE_MANIFEST_FIELD_NUMBER: _ClassVar[int]
    PURGE_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[ManifestFile]
    target: str
    wait_s: float
    remove_manifest: str
    purge: bool
    def __init__(self, files: _Optional[_Iterable[_Union[ManifestFile, _Mapping]]] = ..., target: _Optional[str] = ..., wait_s: _Optional[float] = ..., remove_manifest: _Optional[str] = ..., purge: _Optional[bool] = ...) -> None: ...

class NodePlan(_message.Message):
    __slots__ = ("node_name", "report")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    report: Report
    def __init__(self, node_name: _Optional[str] = ..., report: _Optional[_Union[Report, _Mapping]] = ...) -> None: ...

class PlanResponse(_message.Message):
    __slots__ = ("base_revision", "errors", "answered", "no_answer", "offline", "refused", "unchanged")
    class RefusedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BASE_REVISION_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_FIELD_NUMBER: _ClassVar[int]
    NO_ANSWER_FIELD_NUMBER: _ClassVar[int]
    OFFLINE_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    base_revision: int
    errors: _containers.RepeatedCompositeFieldContainer[ManifestError]
    answered: _containers.RepeatedCompositeFieldContainer[NodePlan]
    no_answer: _containers.RepeatedScalarFieldContainer[str]
    offline: _containers.RepeatedScalarFieldContainer[str]
    refused: _containers.ScalarMap[str, str]
    unchanged: bool
    def __init__(self, base_revision: _Optional[int] = ..., errors: _Optional[_Iterable[_Union[ManifestError, _Mapping]]] = ..., answered: _Optional[_Iterable[_Union[NodePlan, _Mapping]]] = ..., no_answer: _Optional[_Iterable[str]] = ..., offline: _Optional[_Iterable[str]] = ..., refused: _Optional[_Mapping[str, str]] = ..., unchanged: _Optional[bool] = ...) -> None: ...

class ListManifestsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ManifestInfo(_message.Message):
    __slots__ = ("name", "file", "target", "resources", "nodes", "changed_in", "author", "changed_at", "mode")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    CHANGED_IN_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    CHANGED_AT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    name: str
    file: str
    target: str
    resources: int
    nodes: _containers.RepeatedScalarFieldContainer[str]
    changed_in: int
    author: str
    changed_at: float
    mode: str
    def __init__(self, name: _Optional[str] = ..., file: _Optional[str] = ..., target: _Optional[str] = ..., resources: _Optional[int] = ..., nodes: _Optional[_Iterable[str]] = ..., changed_in: _Optional[int] = ..., author: _Optional[str] = ..., changed_at: _Optional[float] = ..., mode: _Optional[str] = ...) -> None: ...

class ListManifestsResponse(_message.Message):
    __slots__ = ("revision", "manifests", "purging")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    MANIFESTS_FIELD_NUMBER: _ClassVar[int]
    PURGING_FIELD_NUMBER: _ClassVar[int]
    revision: int
    manifests: _containers.RepeatedCompositeFieldContainer[ManifestInfo]
    purging: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, revision: _Optional[int] = ..., manifests: _Optional[_Iterable[_Union[ManifestInfo, _Mapping]]] = ..., purging: _Optional[_Iterable[str]] = ...) -> None: ...

class RemoveManifestRequest(_message.Message):
    __slots__ = ("name", "purge", "message", "wait_s")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PURGE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    name: str
    purge: bool
    message: str
    wait_s: float
    def __init__(self, name: _Optional[str] = ..., purge: _Optional[bool] = ..., message: _Optional[str] = ..., wait_s: _Optional[float] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("to", "name", "message", "wait_s", "rollout")
    TO_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    to: int
    name: str
    message: str
    wait_s: float
    rollout: RolloutSettings
    def __init__(self, to: _Optional[int] = ..., name: _Optional[str] = ..., message: _Optional[str] = ..., wait_s: _Optional[float] = ..., rollout: _Optional[_Union[RolloutSettings, _Mapping]] = ...) -> None: ...

class ListRevisionsRequest(_message.Message):
    __slots__ = ("manifest", "limit")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    manifest: str
    limit: int
    def __init__(self, manifest: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class RevisionInfo(_message.Message):
    __slots__ = ("revision", "created_at", "author", "message", "origin", "content_sha256", "added", "changed", "removed", "purged")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    CONTENT_SHA256_FIELD_NUMBER: _ClassVar[int]
    ADDED_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    PURGED_FIELD_NUMBER: _ClassVar[int]
    revision: int
    created_at: float
    author: str
    message: str
    origin: str
    content_sha256: str
    added: _containers.RepeatedScalarFieldContainer[str]
    changed: _containers.RepeatedScalarFieldContainer[str]
    removed: _containers.RepeatedScalarFieldContainer[str]
    purged: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, revision: _Optional[int] = ..., created_at: _Optional[float] = ..., author: _Optional[str] = ..., message: _Optional[str] = ..., origin: _Optional[str] = ..., content_sha256: _Optional[str] = ..., added: _Optional[_Iterable[str]] = ..., changed: _Optional[_Iterable[str]] = ..., removed: _Optional[_Iterable[str]] = ..., purged: _Optional[_Iterable[str]] = ...) -> None: ...

class ListRevisionsResponse(_message.Message):
    __slots__ = ("revisions",)
    REVISIONS_FIELD_NUMBER: _ClassVar[int]
    revisions: _containers.RepeatedCompositeFieldContainer[RevisionInfo]
    def __init__(self, revisions: _Optional[_Iterable[_Union[RevisionInfo, _Mapping]]] = ...) -> None: ...

class DiffRevisionsRequest(_message.Message):
    __slots__ = ("old", "new")
    OLD_FIELD_NUMBER: _ClassVar[int]
    NEW_FIELD_NUMBER: _ClassVar[int]
    old: int
    new: int
    def __init__(self, old: _Optional[int] = ..., new: _Optional[int] = ...) -> None: ...

class ManifestDiff(_message.Message):
    __slots__ = ("name", "change", "unified")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    UNIFIED_FIELD_NUMBER: _ClassVar[int]
    name: str
    change: str
    unified: str
    def __init__(self, name: _Optional[str] = ..., change: _Optional[str] = ..., unified: _Optional[str] = ...) -> None: ...

class ResourceDiff(_message.Message):
    __slots__ = ("resource_id", "change", "fields", "nodes")
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    resource_id: str
    change: str
    fields: _containers.RepeatedScalarFieldContainer[str]
    nodes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, resource_id: _Optional[str] = ..., change: _Optional[str] = ..., fields: _Optional[_Iterable[str]] = ..., nodes: _Optional[_Iterable[str]] = ...) -> None: ...

class DiffRevisionsResponse(_message.Message):
    __slots__ = ("old", "new", "manifests", "resources")
    OLD_FIELD_NUMBER: _ClassVar[int]
    NEW_FIELD_NUMBER: _ClassVar[int]
    MANIFESTS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    old: int
    new: int
    manifests: _containers.RepeatedCompositeFieldContainer[ManifestDiff]
    resources: _containers.RepeatedCompositeFieldContainer[ResourceDiff]
    def __init__(self, old: _Optional[int] = ..., new: _Optional[int] = ..., manifests: _Optional[_Iterable[_Union[ManifestDiff, _Mapping]]] = ..., resources: _Optional[_Iterable[_Union[ResourceDiff, _Mapping]]] = ...) -> None: ...

class SetLabelsRequest(_message.Message):
    __slots__ = ("node_name", "set", "remove", "wait_s")
    class SetEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    SET_FIELD_NUMBER: _ClassVar[int]
    REMOVE_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    set: _containers.ScalarMap[str, str]
    remove: _containers.RepeatedScalarFieldContainer[str]
    wait_s: float
    def __init__(self, node_name: _Optional[str] = ..., set: _Optional[_Mapping[str, str]] = ..., remove: _Optional[_Iterable[str]] = ..., wait_s: _Optional[float] = ...) -> None: ...

class SetLabelsResponse(_message.Message):
    __slots__ = ("node_name", "labels", "matched_before", "matched_after", "revision", "delivered", "refused", "catalog_problem")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MATCHED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    MATCHED_AFTER_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    CATALOG_PROBLEM_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    labels: _containers.ScalarMap[str, str]
    matched_before: _containers.RepeatedScalarFieldContainer[str]
    matched_after: _containers.RepeatedScalarFieldContainer[str]
    revision: int
    delivered: bool
    refused: str
    catalog_problem: str
    def __init__(self, node_name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., matched_before: _Optional[_Iterable[str]] = ..., matched_after: _Optional[_Iterable[str]] = ..., revision: _Optional[int] = ..., delivered: _Optional[bool] = ..., refused: _Optional[str] = ..., catalog_problem: _Optional[str] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ("removed", "target")
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    removed: bool
    target: str
    def __init__(self, removed: _Optional[bool] = ..., target: _Optional[str] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("name", "labels", "connected", "last_seen", "applied_revision", "latest_revision", "compliance", "enrolled_at", "clock_offset_s", "catalog_problem", "reported_revision", "summary", "losses", "conditions", "cert_serial", "revoked_at", "decommissioned_at", "enrolled_by_token", "cert_not_after", "next_cert_serial", "cert_issuer", "facts", "kept_revision", "state", "last_report_at", "run_interval_s")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class FactsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    APPLIED_REVISION_FIELD_NUMBER: _ClassVar[int]
    LATEST_REVISION_FIELD_NUMBER: _ClassVar[int]
    COMPLIANCE_FIELD_NUMBER: _ClassVar[int]
    ENROLLED_AT_FIELD_NUMBER: _ClassVar[int]
    CLOCK_OFFSET_S_FIELD_NUMBER: _ClassVar[int]
    CATALOG_PROBLEM_FIELD_NUMBER: _ClassVar[int]
    REPORTED_REVISION_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    LOSSES_FIELD_NUMBER: _ClassVar[int]
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    CERT_SERIAL_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    DECOMMISSIONED_AT_FIELD_NUMBER: _ClassVar[int]
    ENROLLED_BY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CERT_NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    NEXT_CERT_SERIAL_FIELD_NUMBER: _ClassVar[int]
    CERT_ISSUER_FIELD_NUMBER: _ClassVar[int]
    FACTS_FIELD_NUMBER: _ClassVar[int]
    KEPT_REVISION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_REPORT_AT_FIELD_NUMBER: _ClassVar[int]
    RUN_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    name: str
    labels: _containers.ScalarMap[str, str]
    connected: bool
    last_seen: float
    applied_revision: int
    latest_revision: int
    compliance: float
    enrolled_at: float
    clock_offset_s: float
    catalog_problem: str
    reported_revision: int
    summary: ComplianceRow
    losses: _containers.RepeatedCompositeFieldContainer[StateLoss]
    conditions: _containers.RepeatedCompositeFieldContainer[NodeCondition]
    cert_serial: str
    revoked_at: float
    decommissioned_at: float
    enrolled_by_token: str
    cert_not_after: float
    next_cert_serial: str
    cert_issuer: str
    facts: _containers.ScalarMap[str, str]
    kept_revision: int
    state: str
    last_report_at: float
    run_interval_s: float
    def __init__(self, name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., connected: _Optional[bool] = ..., last_seen: _Optional[float] = ..., applied_revision: _Optional[int] = ..., latest_revision: _Optional[int] = ..., compliance: _Optional[float] = ..., enrolled_at: _Optional[float] = ..., clock_offset_s: _Optional[float] = ..., catalog_problem: _Optional[str] = ..., reported_revision: _Optional[int] = ..., summary: _Optional[_Union[ComplianceRow, _Mapping]] = ..., losses: _Optional[_Iterable[_Union[StateLoss, _Mapping]]] = ..., conditions: _Optional[_Iterable[_Union[NodeCondition, _Mapping]]] = ..., cert_serial: _Optional[str] = ..., revoked_at: _Optional[float] = ..., decommissioned_at: _Optional[float] = ..., enrolled_by_token: _Optional[str] = ..., cert_not_after: _Optional[float] = ..., next_cert_serial: _Optional[str] = ..., cert_issuer: _Optional[str] = ..., facts: _Optional[_Mapping[str, str]] = ..., kept_revision: _Optional[int] = ..., state: _Optional[str] = ..., last_report_at: _Optional[float] = ..., run_interval_s: _Optional[float] = ...) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    def __init__(self, nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ...) -> None: ...

class GetReportRequest(_message.Message):
    __slots__ = ("node_name", "run_id")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    run_id: str
    def __init__(self, node_name: _Optional[str] = ..., run_id: _Optional[str] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("node_name", "since", "limit")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    since: float
    limit: int
    def __init__(self, node_name: _Optional[str] = ..., since: _Optional[float] = ..., limit: _Optional[int] = ...) -> None: ...

class RunInfo(_message.Message):
    __slots__ = ("id", "revision", "noop", "trigger", "started_at", "finished_at", "received_at", "sequence", "counts")
    class CountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    NOOP_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    revision: int
    noop: bool
    trigger: Trigger
    started_at: float
    finished_at: float
    received_at: float
    sequence: int
    counts: _containers.ScalarMap[str, int]
    def __init__(self, id: _Optional[str] = ..., revision: _Optional[int] = ..., noop: _Optional[bool] = ..., trigger: _Optional[_Union[Trigger, str]] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., received_at: _Optional[float] = ..., sequence: _Optional[int] = ..., counts: _Optional[_Mapping[str, int]] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs", "more")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[RunInfo]
    more: bool
    def __init__(self, runs: _Optional[_Iterable[_Union[RunInfo, _Mapping]]] = ..., more: _Optional[bool] = ...) -> None: ...

class GetReportResponse(_message.Message):
    __slots__ = ("report", "found", "catalog_problem", "latest_revision")
    REPORT_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    CATALOG_PROBLEM_FIELD_NUMBER: _ClassVar[int]
    LATEST_REVISION_FIELD_NUMBER: _ClassVar[int]
    report: Report
    found: bool
    catalog_problem: str
    latest_revision: int
    def __init__(self, report: _Optional[_Union[Report, _Mapping]] = ..., found: _Optional[bool] = ..., catalog_problem: _Optional[str] = ..., latest_revision: _Optional[int] = ...) -> None: ...

class ListDriftRequest(_message.Message):
    __slots__ = ("node_name", "limit", "kind", "manifest", "control", "since", "unrepaired")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNREPAIRED_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    limit: int
    kind: str
    manifest: str
    control: str
    since: float
    unrepaired: bool
    def __init__(self, node_name: _Optional[str] = ..., limit: _Optional[int] = ..., kind: _Optional[str] = ..., manifest: _Optional[str] = ..., control: _Optional[str] = ..., since: _Optional[float] = ..., unrepaired: _Optional[bool] = ...) -> None: ...

class DriftEvent(_message.Message):
    __slots__ = ("id", "node_name", "report_id", "resource_id", "manifest", "status", "changes", "detected_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    REPORT_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    DETECTED_AT_FIELD_NUMBER: _ClassVar[int]
    id: int
    node_name: str
    report_id: str
    resource_id: str
    manifest: str
    status: Status
    changes: _containers.RepeatedCompositeFieldContainer[Change]
    detected_at: float
    def __init__(self, id: _Optional[int] = ..., node_name: _Optional[str] = ..., report_id: _Optional[str] = ..., resource_id: _Optional[str] = ..., manifest: _Optional[str] = ..., status: _Optional[_Union[Status, str]] = ..., changes: _Optional[_Iterable[_Union[Change, _Mapping]]] = ..., detected_at: _Optional[float] = ...) -> None: ...

class ListDriftResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[DriftEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[DriftEvent, _Mapping]]] = ...) -> None: ...

class GetComplianceRequest(_message.Message):
    __slots__ = ("by", "target")
    BY_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    by: str
    target: str
    def __init__(self, by: _Optional[str] = ..., target: _Optional[str] = ...) -> None: ...

class ComplianceRow(_message.Message):
    __slots__ = ("scope", "name", "compliant", "expected", "percent", "counts", "percent_with_waivers")
    class CountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    COMPLIANT_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    PERCENT_WITH_WAIVERS_FIELD_NUMBER: _ClassVar[int]
    scope: str
    name: str
    compliant: int
    expected: int
    percent: float
    counts: _containers.ScalarMap[str, int]
    percent_with_waivers: float
    def __init__(self, scope: _Optional[str] = ..., name: _Optional[str] = ..., compliant: _Optional[int] = ..., expected: _Optional[int] = ..., percent: _Optional[float] = ..., counts: _Optional[_Mapping[str, int]] = ..., percent_with_waivers: _Optional[float] = ...) -> None: ...

class WaiverInfo(_message.Message):
    __slots__ = ("id", "control", "resource_id", "target", "reason", "approver", "created_at", "expires_at", "revoked_at", "state")
    ID_FIELD_NUMBER: _ClassVar[int]
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    APPROVER_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    id: int
    control: str
    resource_id: str
    target: str
    reason: str
    approver: str
    created_at: float
    expires_at: float
    revoked_at: float
    state: str
    def __init__(self, id: _Optional[int] = ..., control: _Optional[str] = ..., resource_id: _Optional[str] = ..., target: _Optional[str] = ..., reason: _Optional[str] = ..., approver: _Optional[str] = ..., created_at: _Optional[float] = ..., expires_at: _Optional[float] = ..., revoked_at: _Optional[float] = ..., state: _Optional[str] = ...) -> None: ...

class AddWaiverRequest(_message.Message):
    __slots__ = ("control", "resource_id", "target", "reason", "expires_at")
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    control: str
    resource_id: str
    target: str
    reason: str
    expires_at: float
    def __init__(self, control: _Optional[str] = ..., resource_id: _Optional[str] = ..., target: _Optional[str] = ..., reason: _Optional[str] = ..., expires_at: _Optional[float] = ...) -> None: ...

class ListWaiversRequest(_message.Message):
    __slots__ = ("all",)
    ALL_FIELD_NUMBER: _ClassVar[int]
    all: bool
    def __init__(self, all: _Optional[bool] = ...) -> None: ...

class ListWaiversResponse(_message.Message):
    __slots__ = ("waivers",)
    WAIVERS_FIELD_NUMBER: _ClassVar[int]
    waivers: _containers.RepeatedCompositeFieldContainer[WaiverInfo]
    def __init__(self, waivers: _Optional[_Iterable[_Union[WaiverInfo, _Mapping]]] = ...) -> None: ...

class RevokeWaiverRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    def __init__(self, id: _Optional[int] = ...) -> None: ...

class RevokeNodeRequest(_message.Message):
    __slots__ = ("node_name",)
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    def __init__(self, node_name: _Optional[str] = ...) -> None: ...

class RevokeNodeResponse(_message.Message):
    __slots__ = ("node_name", "cert_serial", "revoked_at", "already_revoked", "sessions_ended")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    CERT_SERIAL_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    ALREADY_REVOKED_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_ENDED_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    cert_serial: str
    revoked_at: float
    already_revoked: bool
    sessions_ended: int
    def __init__(self, node_name: _Optional[str] = ..., cert_serial: _Optional[str] = ..., revoked_at: _Optional[float] = ..., already_revoked: _Optional[bool] = ..., sessions_ended: _Optional[int] = ...) -> None: ...

class RemoveNodeRequest(_message.Message):
    __slots__ = ("node_name",)
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    def __init__(self, node_name: _Optional[str] = ...) -> None: ...

class RemoveNodeResponse(_message.Message):
    __slots__ = ("node_name", "cert_serial", "decommissioned_at", "already_removed", "sessions_ended")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    CERT_SERIAL_FIELD_NUMBER: _ClassVar[int]
    DECOMMISSIONED_AT_FIELD_NUMBER: _ClassVar[int]
    ALREADY_REMOVED_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_ENDED_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    cert_serial: str
    decommissioned_at: float
    already_removed: bool
    sessions_ended: int
    def __init__(self, node_name: _Optional[str] = ..., cert_serial: _Optional[str] = ..., decommissioned_at: _Optional[float] = ..., already_removed: _Optional[bool] = ..., sessions_ended: _Optional[int] = ...) -> None: ...

class GetComplianceResponse(_message.Message):
    __slots__ = ("rows", "fleet", "revision")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    FLEET_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[ComplianceRow]
    fleet: ComplianceRow
    revision: int
    def __init__(self, rows: _Optional[_Iterable[_Union[ComplianceRow, _Mapping]]] = ..., fleet: _Optional[_Union[ComplianceRow, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...

class OperatorInfo(_message.Message):
    __slots__ = ("name", "role", "cert_serial", "created_at", "revoked_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CERT_SERIAL_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: str
    cert_serial: str
    created_at: float
    revoked_at: float
    def __init__(self, name: _Optional[str] = ..., role: _Optional[str] = ..., cert_serial: _Optional[str] = ..., created_at: _Optional[float] = ..., revoked_at: _Optional[float] = ...) -> None: ...

class AddOperatorRequest(_message.Message):
    __slots__ = ("name", "role", "csr_pem")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: str
    csr_pem: bytes
    def __init__(self, name: _Optional[str] = ..., role: _Optional[str] = ..., csr_pem: _Optional[bytes] = ...) -> None: ...

class AddOperatorResponse(_message.Message):
    __slots__ = ("operator", "certificate_pem", "ca_pem")
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    operator: OperatorInfo
    certificate_pem: bytes
    ca_pem: bytes
    def __init__(self, operator: _Optional[_Union[OperatorInfo, _Mapping]] = ..., certificate_pem: _Optional[bytes] = ..., ca_pem: _Optional[bytes] = ...) -> None: ...

class ListOperatorsRequest(_message.Message):
    __slots__ = ("all",)
    ALL_FIELD_NUMBER: _ClassVar[int]
    all: bool
    def __init__(self, all: _Optional[bool] = ...) -> None: ...

class ListOperatorsResponse(_message.Message):
    __slots__ = ("operators",)
    OPERATORS_FIELD_NUMBER: _ClassVar[int]
    operators: _containers.RepeatedCompositeFieldContainer[OperatorInfo]
    def __init__(self, operators: _Optional[_Iterable[_Union[OperatorInfo, _Mapping]]] = ...) -> None: ...

class RenewOperatorRequest(_message.Message):
    __slots__ = ("csr_pem",)
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    csr_pem: bytes
    def __init__(self, csr_pem: _Optional[bytes] = ...) -> None: ...

class RenewOperatorResponse(_message.Message):
    __slots__ = ("operator", "certificate_pem", "replaced_serial", "trusted_ca_pem")
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    REPLACED_SERIAL_FIELD_NUMBER: _ClassVar[int]
    TRUSTED_CA_PEM_FIELD_NUMBER: _ClassVar[int]
    operator: OperatorInfo
    certificate_pem: bytes
    replaced_serial: str
    trusted_ca_pem: bytes
    def __init__(self, operator: _Optional[_Union[OperatorInfo, _Mapping]] = ..., certificate_pem: _Optional[bytes] = ..., replaced_serial: _Optional[str] = ..., trusted_ca_pem: _Optional[bytes] = ...) -> None: ...

class RevokeOperatorRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RevokeOperatorResponse(_message.Message):
    __slots__ = ("operator", "already_revoked")
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    ALREADY_REVOKED_FIELD_NUMBER: _ClassVar[int]
    operator: OperatorInfo
    already_revoked: bool
    def __init__(self, operator: _Optional[_Union[OperatorInfo, _Mapping]] = ..., already_revoked: _Optional[bool] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("id", "at", "actor_kind", "actor", "role", "peer", "action", "details_json", "result", "reason", "revision", "prev_hash", "hash")
    ID_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_KIND_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    DETAILS_JSON_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    PREV_HASH_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    id: int
    at: float
    actor_kind: str
    actor: str
    role: str
    peer: str
    action: str
    details_json: str
    result: str
    reason: str
    revision: int
    prev_hash: str
    hash: str
    def __init__(self, id: _Optional[int] = ..., at: _Optional[float] = ..., actor_kind: _Optional[str] = ..., actor: _Optional[str] = ..., role: _Optional[str] = ..., peer: _Optional[str] = ..., action: _Optional[str] = ..., details_json: _Optional[str] = ..., result: _Optional[str] = ..., reason: _Optional[str] = ..., revision: _Optional[int] = ..., prev_hash: _Optional[str] = ..., hash: _Optional[str] = ...) -> None: ...

class ListAuditRequest(_message.Message):
    __slots__ = ("since", "limit")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    since: float
    limit: int
    def __init__(self, since: _Optional[float] = ..., limit: _Optional[int] = ...) -> None: ...

class ListAuditResponse(_message.Message):
    __slots__ = ("entries", "more")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    more: bool
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ..., more: _Optional[bool] = ...) -> None: ...

class VerifyAuditRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VerifyAuditResponse(_message.Message):
    __slots__ = ("intact", "entries", "head_id", "head_hash", "broken_at", "problem")
    INTACT_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    HEAD_ID_FIELD_NUMBER: _ClassVar[int]
    HEAD_HASH_FIELD_NUMBER: _ClassVar[int]
    BROKEN_AT_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    intact: bool
    entries: int
    head_id: int
    head_hash: str
    broken_at: int
    problem: str
    def __init__(self, intact: _Optional[bool] = ..., entries: _Optional[int] = ..., head_id: _Optional[int] = ..., head_hash: _Optional[str] = ..., broken_at: _Optional[int] = ..., problem: _Optional[str] = ...) -> None: ...
