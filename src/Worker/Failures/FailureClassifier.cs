using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using Conveyor.Storage;
using Conveyor.Worker.Inbox;
using MassTransit;
using Microsoft.EntityFrameworkCore;
using Npgsql;

namespace Conveyor.Worker.Failures;

/// <summary>Decides whether an exception is worth retrying. Unknown exceptions are permanent.</summary>
public static class FailureClassifier
{
    public static bool IsTransient(Exception exception) => exception switch
    {
        PermanentFailureException => false,
        // The applied command stands whatever happens next: trying again cannot change the answer.
        IdempotencyConflictException => false,
        // Another worker's run holds the job: trying again would only meet its lease again.
        LeaseDeferralsSpentException => false,
        TransientFailureException => true,
        RequeueRequestedException => true,
        // Out of time on this delivery, not wrong: a redelivery brings a fresh one.
        DeliveryDeadlineException => true,
        // What broke the commit decides: an unavailable database or a deadlock passes, a constraint
        // this message's own effect violates (its batch fell back to one transaction per message) does not.
        InboxBatchFailedException { InnerException: { } inner } => IsTransient(inner),
        InboxBatchFailedException => true,
        OperationCanceledException => false,
        // MassTransit's stand-in for a consumer's cancellation while the delivery's own token was not
        // cancelled (a shutdown keeps the original exception): something timed out, not a shutdown.
        ConsumerCanceledException => true,
        TimeoutException => true,
        HttpRequestException { StatusCode: { } status } => IsTransientStatus(status),
        HttpRequestException http => IsTransientRequestError(http.HttpRequestError),
        SocketException => true,
        IOException => true,
        NpgsqlException npgsql => npgsql.IsTransient || IsTransientSqlState(npgsql) || DatabaseFailures.IsUnavailable(npgsql),
        DbUpdateException { InnerException: { } inner } => IsTransient(inner),
        InvalidOperationException { InnerException: { } inner } => IsTransient(inner),
        JsonException => false,
        _ => false,
    };

    /// <summary>
    /// The worker's own store is out of reach (the message goes back to its queue): no message and no
    /// remote side causes it, and every message of every endpoint meets it alike.
    /// </summary>
    public static bool IsWorkerOutage(Exception exception) =>
        exception is RequeueRequestedException || DatabaseFailures.IsUnavailable(exception);

    /// <summary>
    /// A request that got no answer: network trouble (name resolution, connection, TLS, a cut-off
    /// response) may pass; a remote that needs something this client does not do (HTTP version,
    /// extended CONNECT, proxy credentials) or answers beyond its limits (headers too large) will
    /// answer the same way next time.
    /// </summary>
    public static bool IsTransientRequestError(HttpRequestError error) => error is not (
        HttpRequestError.VersionNegotiationError
        or HttpRequestError.ExtendedConnectNotSupported
        or HttpRequestError.UserAuthenticationError
        or HttpRequestError.ConfigurationLimitExceeded);

    /// <summary>
    /// 425 Too Early (RFC 8470), which <see cref="HttpStatusCode"/> does not name: the server will not process
    /// a request that might be replayed (sent in TLS early data) and asks for it again later, once the
    /// handshake is complete.
    /// </summary>
    public const HttpStatusCode TooEarly = (HttpStatusCode)425;

    /// <summary>
    /// 408, 425, 429 and the 5xx may succeed later; other statuses will not. Nor will 501 (the server does not
    /// implement the request's method), 505 (nor its HTTP version) and 510 Not Extended (RFC 2774: the request
    /// lacks an extension declaration its resource demands, which this client never sends): a server's answer
    /// about what it does at all, not about how it is doing, as a version the client cannot negotiate
    /// (<see cref="IsTransientRequestError"/>) is permanent. 508 Loop Detected stays transient: RFC 5842 gives
    /// it for a WebDAV request with <c>Depth: infinity</c>, which this client never sends, so on a POST it is a
    /// shared host's limit on its account's processes (CloudLinux's "508 Resource Limit Is Reached") or a loop
    /// between proxies in front of the server, which pass or are mended there, as a 502 is. So does 511
    /// Network Authentication Required: RFC 6585 gives it to an intercepting proxy on the client's own network
    /// (origin servers must not send it), so every request from this worker meets it alike until its operator
    /// mends the worker's way out, as a connection error. A status of 600 to 999 counts as a 5xx
    /// (<see cref="IsServerError"/>).
    /// </summary>
    public static bool IsTransientStatus(HttpStatusCode status) =>
        status is HttpStatusCode.RequestTimeout or TooEarly or HttpStatusCode.TooManyRequests
        || (IsServerError(status) && status is not (HttpStatusCode.NotImplemented or HttpStatusCode.HttpVersionNotSupported or HttpStatusCode.NotExtended));

    /// <summary>
    /// A 5xx, or a status of 600 to 999: not valid HTTP (RFC 9110 section 15 ends statuses at 599), but
    /// HttpClient passes any three digits through, and RFC 9110 asks a client to process such an answer as a
    /// 5xx; a 5xx the client does not know is taken for a 500 (its class's x00). Servers leak these numbers
    /// from their libraries' internal errors, which is what a 500 says too, so every classifier treats them
    /// as a 500: retried, and dead-lettered once the attempts are spent.
    /// </summary>
    private static bool IsServerError(HttpStatusCode status) => (int)status >= 500;

    /// <summary>
    /// As <see cref="IsTransientStatus"/>, for a remote side that is sent an Idempotency-Key (the payment
    /// gateway, webhook receivers), and 409 too: Stripe (as the IETF Idempotency-Key draft) answers 409
    /// while an earlier request with the same key is still in progress, such as an attempt that timed out
    /// here while the remote side went on working. That request may well succeed, and only a later attempt
    /// with the key can get its answer: dead-lettered, a payment's job would leave a charge the ledger never
    /// records, and a webhook's would read undelivered while its receiver has it.
    /// And 421 Misdirected Request: the server that got the request does not answer for its URL's scheme and
    /// authority (a load balancer's node or a CDN edge set up wrong, an address moving), and RFC 9110 lets the
    /// client retry it over a different connection. Only with a key: if the server did act on it after all,
    /// the retry is answered as the first one and does nothing twice. A retry soon after may find the same
    /// connection in HttpClient's pool and the same answer; a redelivery minutes later mostly goes over a new
    /// one (an idle pooled connection is closed after a minute), and the attempts are bounded as for a 503.
    /// </summary>
    public static bool IsTransientIdempotentStatus(HttpStatusCode status) =>
        status is HttpStatusCode.Conflict or HttpStatusCode.MisdirectedRequest || IsTransientStatus(status);

    /// <summary>
    /// As <see cref="IsTransientIdempotentStatus"/>, for the payment gateway, and 501, 505 and 510 too: every 5xx
    /// (and every status of 600 to 999, <see cref="IsServerError"/>).
    /// The gateway is one remote side the operator configures, so a 501, 505 or 510 from it (or from a proxy in
    /// front of it) refuses every payment until the operator or the gateway changes something, as an outage
    /// does: transient, the kill switch pauses the endpoint instead of every payment being dead-lettered at
    /// once. A webhook receiver is one of many a submitter chooses, and its 501, 505 and 510 stay permanent.
    /// </summary>
    public static bool IsTransientGatewayStatus(HttpStatusCode status) =>
        IsServerError(status) || IsTransientIdempotentStatus(status);

    // Serialization failures and deadlocks are resolved by running the transaction again; a statement
    // cancelled at statement_timeout may pass when the database is less busy, within the retry budget, and so
    // may a transaction the server ended at idle_in_transaction_session_timeout (a consumer that waited on its
    // remote side longer than the server lets a transaction idle), on a new session.
    private static bool IsTransientSqlState(NpgsqlException exception) =>
        exception is PostgresException
        {
            SqlState: PostgresErrorCodes.SerializationFailure or PostgresErrorCodes.DeadlockDetected or PostgresErrorCodes.QueryCanceled
                or DatabaseFailures.IdleInTransactionSessionTimeout,
        };
}
