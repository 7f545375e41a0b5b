"""Key resolvers for inbound rate limits: addresses, API keys, principals, JWTs, headers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buttress.asgi.keys import (
    ROUTE_TEMPLATE_KEY,
    api_key,
    client_ip,
    header,
    jwt_subject,
    principal,
    route,
    tenant,
)
from buttress.errors import ConfigurationError

SECRET = b"s" * 32
NOW = 1_800_000_000.0


def scope(
    headers: dict[str, str | bytes] | list[tuple[bytes, bytes]] | None = None,
    client: tuple[str, int] | None = ("203.0.113.9", 5000),
    **extra: Any,
) -> dict[str, Any]:
    if isinstance(headers, dict):
        raw = [
            (k.lower().encode(), v if isinstance(v, bytes) else v.encode("latin-1"))
            for k, v in headers.items()
        ]
    else:
        raw = list(headers or [])
    return {
        "type": "http",
        "method": "GET",
        "path": "/x",
        "headers": raw,
        "client": client,
        **extra,
    }


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(
    claims: dict[str, Any],
    secret: bytes = SECRET,
    alg: str = "HS256",
    head: dict[str, Any] | None = None,
) -> str:
    header_part = b64(json.dumps(head or {"alg": alg, "typ": "JWT"}).encode())
    payload_part = b64(json.dumps(claims).encode())
    signing = f"{header_part}.{payload_part}".encode()
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}.get(
        alg, hashlib.sha256
    )
    signature = b64(hmac.new(secret, signing, digest).digest()) if alg != "none" else ""
    return f"{header_part}.{payload_part}.{signature}"


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


# ---------------------------------------------------------------- client_ip
def test_client_ip_is_the_peer_without_trusted_proxies() -> None:
    key = client_ip()
    assert key(scope()) == "ip:203.0.113.9"
    # a forged X-Forwarded-For from an untrusted peer is ignored
    assert key(scope({"x-forwarded-for": "1.2.3.4"})) == "ip:203.0.113.9"


def test_client_ip_behind_trusted_proxies_takes_the_rightmost_untrusted_hop() -> None:
    key = client_ip(["10.0.0.0/8"])
    s = scope({"x-forwarded-for": "6.6.6.6, 198.51.100.7, 10.0.0.2"}, client=("10.0.0.1", 1))
    assert key(s) == "ip:198.51.100.7"  # never the left-most, which the client wrote


def test_client_ip_groups_ipv6_by_64_and_unmaps_ipv4() -> None:
    key = client_ip()
    a = key(scope(client=("2001:db8:1:2:aaaa::1", 1)))
    b = key(scope(client=("2001:db8:1:2:bbbb::9", 1)))
    assert a == b == "ip:2001:db8:1:2::/64"
    assert key(scope(client=("2001:db8:1:3::1", 1))) != a
    assert client_ip(ipv6_prefix=128)(scope(client=("2001:db8::1", 1))) == "ip:2001:db8::1"
    assert key(scope(client=("::ffff:192.0.2.1", 1))) == "ip:192.0.2.1"


def test_client_ip_is_none_without_a_client() -> None:
    assert client_ip()(scope(client=None)) is None


def test_client_ip_validates_its_options() -> None:
    with pytest.raises(ConfigurationError, match="trusted_proxies"):
        client_ip(["not-a-network"])
    with pytest.raises(ConfigurationError, match="ipv6_prefix"):
        client_ip(ipv6_prefix=8)


# ---------------------------------------------------------------- api_key
def test_api_key_from_header_and_bearer() -> None:
    assert api_key()(scope({"x-api-key": "k-123"})) == "apikey:k-123"
    assert api_key()(scope()) is None
    assert api_key()(scope(bearer("tok"))) is None  # bearer not enabled
    assert api_key(bearer=True)(scope(bearer("tok"))) == "apikey:tok"
    assert api_key("x-key")(scope({"x-key": "abc"})) == "apikey:abc"


@pytest.mark.parametrize(
    "value", [b"", b"has space", b"tab\there", "ünïcode".encode(), b"x" * 513, b"\x00\x01"]
)
def test_malformed_api_keys_never_get_a_key_of_their_own(value: bytes) -> None:
    s = scope([(b"x-api-key", value)])
    assert api_key()(s) == "apikey:invalid:ip:203.0.113.9"
    assert api_key(on_invalid="shared")(s) == "apikey:invalid"
    assert api_key(on_invalid="skip")(s) is None


def test_api_key_validates_its_options() -> None:
    with pytest.raises(ConfigurationError, match="header"):
        api_key("bad header")
    with pytest.raises(ConfigurationError, match="on_invalid"):
        api_key(on_invalid="fresh")  # type: ignore[arg-type]


# ---------------------------------------------------------------- principal, header, tenant
def test_principal_from_state_or_a_resolver() -> None:
    assert principal()(scope(state={"principal": "u-1"})) == "principal:u-1"
    assert principal()(scope(state={})) is None
    assert principal()(scope()) is None
    assert principal(lambda s: s["headers"][0][1].decode())(scope({"x-user": "bob"})) == (
        "principal:bob"
    )
    with pytest.raises(ConfigurationError):
        principal(resolver="nope")  # type: ignore[arg-type]


def test_header_key() -> None:
    key = header("X-Device-Id")
    assert key(scope({"x-device-id": "d1"})) == "header:x-device-id:d1"
    assert key(scope()) is None
    assert key(scope({"x-device-id": ""})) is None
    with pytest.raises(ConfigurationError):
        header("")


def test_tenant_prefers_the_verified_state_over_the_header() -> None:
    key = tenant()
    assert key(scope({"x-tenant-id": "acme"})) == "tenant:acme"
    assert key(scope({"x-tenant-id": "acme"}, state={"tenant": "globex"})) == "tenant:globex"
    assert key(scope()) is None
    assert tenant(header=None)(scope({"x-tenant-id": "acme"})) is None
    with pytest.raises(ConfigurationError):
        tenant(header=None, state_key=None)


def test_route_key_uses_the_best_template_known() -> None:
    class Route:
        path_format = "/orders/{id}"

    key = route()
    assert key(scope(route=Route())) == "route:/orders/{id}"
    assert key(scope(**{ROUTE_TEMPLATE_KEY: "/items/{id}"})) == "route:/items/{id}"
    assert key(scope()) == "route:/x"


# ---------------------------------------------------------------- jwt_subject
def jwt_key(**options: Any) -> Any:
    options.setdefault("wall_clock", lambda: NOW)
    return jwt_subject(options.pop("secret", SECRET), **options)


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_a_valid_token_keys_by_subject(alg: str) -> None:
    key = jwt_key(algorithms=(alg,))
    token = make_jwt({"sub": "user-7", "exp": NOW + 60}, alg=alg)
    assert key(scope(bearer(token))) == "jwt:user-7"
    assert key(scope({"authorization": f"bearer  {token} "})) == "jwt:user-7"


def test_no_token_means_the_limit_does_not_apply() -> None:
    assert jwt_key()(scope()) is None


@pytest.mark.parametrize(
    "token",
    [
        make_jwt({"sub": "u", "exp": NOW - 31}),  # expired beyond the leeway
        make_jwt({"sub": "u", "nbf": NOW + 31}),  # not yet valid
        make_jwt({"sub": "u"}, secret=b"x" * 32),  # forged: another secret
        make_jwt({"sub": "u"}, alg="none"),  # alg none, no signature
        make_jwt({"sub": "u"}, head={"alg": "none"}),  # alg none with a signature
        make_jwt({"sub": "u"}, alg="HS512"),  # an algorithm that is not allowed
        make_jwt({"sub": "u"}, head={"alg": "RS256"}),
        make_jwt({"sub": "u"}, head={"alg": "HS256", "crit": ["x"]}),
        make_jwt({"name": "no subject"}),
        make_jwt({"sub": ""}),
        make_jwt({"sub": ["a"]}),
        make_jwt({"sub": "u", "exp": "tomorrow"}),
        "only.two",
        "a.b.c.d",
        "!!!.???.***",
        b64(b"[1,2]") + "." + b64(b"{}") + ".sig",
        b64(b"[" * 5000) + "." + b64(b"{}") + ".x",
        "x" * 9000,
        "",
    ],
)
def test_invalid_tokens_count_against_the_client_address(token: str) -> None:
    assert jwt_key()(scope(bearer(token))) == "jwt:invalid:ip:203.0.113.9"


def test_tampered_payload_is_refused() -> None:
    token = make_jwt({"sub": "alice"})
    head, _, sig = token.split(".")
    forged = f"{head}.{b64(json.dumps({'sub': 'bob'}).encode())}.{sig}"
    assert jwt_key()(scope(bearer(forged))) == "jwt:invalid:ip:203.0.113.9"


def test_invalid_tokens_never_get_a_fresh_key_per_request() -> None:
    key = jwt_key()
    forged = {key(scope(bearer(make_jwt({"sub": f"u{i}"}, secret=b"y" * 32)))) for i in range(20)}
    assert forged == {"jwt:invalid:ip:203.0.113.9"}
    assert jwt_key(on_invalid="shared")(scope(bearer("junk"))) == "jwt:invalid"
    assert jwt_key(on_invalid="skip")(scope(bearer("junk"))) is None
    assert jwt_key()(scope(bearer("junk"), client=None)) == "jwt:invalid"


def test_other_authorization_schemes_are_not_tokens() -> None:
    assert jwt_key()(scope({"authorization": "Basic dXNlcjpwYXNz"})) == (
        "jwt:invalid:ip:203.0.113.9"
    )


def test_leeway_exp_nbf_and_the_cache() -> None:
    now = [NOW]
    key = jwt_key(wall_clock=lambda: now[0], leeway=10)
    token = make_jwt({"sub": "u", "exp": NOW + 5, "nbf": NOW - 5})
    assert key(scope(bearer(token))) == "jwt:u"
    now[0] = NOW + 14  # inside the leeway (cached now)
    assert key(scope(bearer(token))) == "jwt:u"
    now[0] = NOW + 16  # a cached token still expires
    assert key(scope(bearer(token))) == "jwt:invalid:ip:203.0.113.9"


def test_issuer_audience_claim_and_header_options() -> None:
    key = jwt_key(issuer="https://auth.example", audience="api")
    good = make_jwt({"sub": "u", "iss": "https://auth.example", "aud": ["api", "web"]})
    assert key(scope(bearer(good))) == "jwt:u"
    assert key(scope(bearer(make_jwt({"sub": "u", "iss": "https://auth.example"})))).startswith(
        "jwt:invalid"
    )
    assert key(scope(bearer(make_jwt({"sub": "u", "aud": "api"})))).startswith("jwt:invalid")
    by_client = jwt_key(claim="client_id", header="x-token")
    assert by_client(scope({"x-token": make_jwt({"client_id": 42})})) == "jwt:42"


def test_verify_false_trusts_a_gateway_but_still_checks_expiry() -> None:
    key = jwt_subject(verify=False, algorithms=("HS256",), wall_clock=lambda: NOW)
    assert key(scope(bearer(make_jwt({"sub": "u"}, secret=b"any" * 11)))) == "jwt:u"
    assert key(scope(bearer(make_jwt({"sub": "u", "exp": NOW - 100})))).startswith("jwt:invalid")
    assert key(scope(bearer(make_jwt({"sub": "u"}, alg="none")))).startswith("jwt:invalid")


def test_jwt_subject_validates_its_options() -> None:
    with pytest.raises(ConfigurationError, match="secret"):
        jwt_subject()
    with pytest.raises(ConfigurationError, match="32 bytes"):
        jwt_subject("short")
    with pytest.raises(ConfigurationError, match="algorithms"):
        jwt_subject(SECRET, algorithms=("none",))
    with pytest.raises(ConfigurationError, match="algorithms"):
        jwt_subject(SECRET, algorithms=("RS256",))
    with pytest.raises(ConfigurationError, match="would not be used"):
        jwt_subject(SECRET, verify=False)
    with pytest.raises(ConfigurationError, match="leeway"):
        jwt_subject(SECRET, leeway=-1)
    with pytest.raises(ConfigurationError, match="on_invalid"):
        jwt_subject(SECRET, on_invalid="new")  # type: ignore[arg-type]
    assert jwt_subject(SECRET.decode(), algorithms="HS256") is not None


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([b"authorization", b"x-api-key", b"x-tenant-id"]))
def test_resolvers_never_raise_on_client_input(value: bytes, name: bytes) -> None:
    s = scope([(name, value), (name, b"Bearer " + value), (b"x-forwarded-for", value)])
    for key in (
        client_ip(["0.0.0.0/0"]),
        api_key(bearer=True),
        jwt_key(),
        tenant(),
        header("authorization"),
        principal(),
        route(),
    ):
        result = key(s)
        assert result is None or isinstance(result, str)
