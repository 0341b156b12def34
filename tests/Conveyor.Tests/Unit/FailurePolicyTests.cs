using System.ComponentModel.DataAnnotations;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Conveyor.Storage;
using Conveyor.Worker.Failures;
using Conveyor.Worker.Hosting;
using Conveyor.Worker.Redelivery;
using Microsoft.EntityFrameworkCore;
using Npgsql;

namespace Conveyor.Tests.Unit;

/// <summary>Pure logic of the failure pipeline: no servers needed.</summary>
public sealed class FailurePolicyTests
{
    private static readonly RedeliveryPolicy Policy = new(4, TimeSpan.FromSeconds(30), 4.5, TimeSpan.FromHours(1), 0.2);

    [Theory]
    [InlineData(1, 30)]
    [InlineData(2, 135)]
    [InlineData(3, 607.5)]
    [InlineData(4, 2733.75)]
    public void Redelivery_delays_grow_exponentially_below_the_cap(int attempt, double expectedSeconds)
    {
        // random = 0.5 is the middle of the jitter band: no jitter.
        Assert.Equal(expectedSeconds, Policy.DelayFor(attempt, null, 0.5).TotalSeconds, 3);
    }

    [Theory]
    [InlineData(1, 24, 36)]
    [InlineData(4, 2187, 3280.5)]
    public void Redelivery_jitter_spreads_a_delay_below_the_cap_by_its_fraction_either_way(int attempt, double lowestSeconds, double highestSeconds)
    {
        Assert.Equal(lowestSeconds, Policy.DelayFor(attempt, null, 0).TotalSeconds, 3);
        Assert.Equal(highestSeconds, Policy.DelayFor(attempt, null, 0.999999).TotalSeconds, 2);
    }

    [Theory]
    [InlineData(5)]
    [InlineData(9)]
    [InlineData(50)]
    public void A_redelivery_delay_at_the_cap_never_exceeds_the_configured_maximum(int attempt)
    {
        Assert.True(Policy.DelayFor(attempt, null, 0.999999) <= TimeSpan.FromHours(1));
        Assert.Equal(3600, Policy.DelayFor(attempt, null, 0.999999).TotalSeconds, 1);
    }

    [Fact]
    public void Redelivery_delays_at_the_cap_still_spread_below_it_so_failed_messages_do_not_return_together()
    {
        // The cap is 1 h; the jitter takes up to 20 % off it, never adds any.
        Assert.Equal(2880, Policy.DelayFor(9, null, 0).TotalSeconds, 3);
        Assert.Equal(3240, Policy.DelayFor(9, null, 0.5).TotalSeconds, 3);
        // Attempt 5 (1 h 42 min uncapped) and attempt 9 share the capped band.
        Assert.Equal(Policy.DelayFor(9, null, 0.25), Policy.DelayFor(5, null, 0.25));
    }

    [Fact]
    public void A_delay_whose_jitter_band_crosses_the_cap_keeps_its_lower_half_and_stops_at_the_cap()
    {
        // 3000 s uncapped: ±20 % would be 2400 s to 3600 s; the cap (3200 s) cuts only the top.
        var policy = new RedeliveryPolicy(4, TimeSpan.FromSeconds(3000), 2, TimeSpan.FromSeconds(3200), 0.2);
        Assert.Equal(2400, policy.DelayFor(1, null, 0).TotalSeconds, 3);
        Assert.Equal(3200, policy.DelayFor(1, null, 0.999999).TotalSeconds, 1);
        Assert.True(policy.DelayFor(1, null, 0.999999) <= TimeSpan.FromSeconds(3200));
    }

    [Fact]
    public void A_remote_retry_after_may_still_lengthen_a_delay_at_the_cap_beyond_the_maximum()
    {
        Assert.Equal(TimeSpan.FromHours(2), Policy.DelayFor(9, TimeSpan.FromHours(2), 0.999999));
        Assert.Equal(RedeliveryPolicy.MaxRetryAfter, Policy.DelayFor(9, TimeSpan.FromDays(30), 0.5));
    }

    [Fact]
    public void A_remote_retry_after_lengthens_the_delay_but_never_shortens_it()
    {
        Assert.Equal(TimeSpan.FromMinutes(5), Policy.DelayFor(1, TimeSpan.FromMinutes(5), 0.5));
        Assert.Equal(TimeSpan.FromSeconds(30), Policy.DelayFor(1, TimeSpan.FromSeconds(2), 0.5));
        Assert.Equal(RedeliveryPolicy.MaxRetryAfter, Policy.DelayFor(1, TimeSpan.FromDays(30), 0.5));
    }

    [Fact]
    public void The_policy_allows_exactly_its_limit_of_redeliveries()
    {
        Assert.False(Policy.Allows(0));
        Assert.True(Policy.Allows(1));
        Assert.True(Policy.Allows(4));
        Assert.False(Policy.Allows(5));
    }

    [Theory]
    [InlineData(HttpStatusCode.RequestTimeout, true)]
    [InlineData(HttpStatusCode.TooManyRequests, true)]
    [InlineData((HttpStatusCode)425, true)] // Too Early (RFC 8470): the same request after the TLS handshake
    [InlineData(HttpStatusCode.InternalServerError, true)]
    [InlineData(HttpStatusCode.ServiceUnavailable, true)]
    [InlineData(HttpStatusCode.BadGateway, true)]
    [InlineData(HttpStatusCode.NotImplemented, false)]
    [InlineData(HttpStatusCode.HttpVersionNotSupported, false)]
    [InlineData(HttpStatusCode.BadRequest, false)]
    [InlineData(HttpStatusCode.Unauthorized, false)]
    [InlineData(HttpStatusCode.NotFound, false)]
    [InlineData(HttpStatusCode.Conflict, false)]
    [InlineData(HttpStatusCode.MisdirectedRequest, false)] // retried only with an Idempotency-Key, below
    [InlineData(HttpStatusCode.UnprocessableEntity, false)]
    public void Http_statuses_are_classified(HttpStatusCode status, bool transient)
    {
        Assert.Equal(transient, FailureClassifier.IsTransientStatus(status));
        Assert.Equal(transient, FailureClassifier.IsTransient(new HttpRequestException("x", null, status)));
    }

    [Theory]
    [InlineData(HttpStatusCode.NotImplemented, false)]
    [InlineData(HttpStatusCode.HttpVersionNotSupported, false)]
    [InlineData(HttpStatusCode.NotExtended, false)] // RFC 2774: an extension declaration this client never sends
    [InlineData(HttpStatusCode.LoopDetected, true)] // RFC 5842's meaning needs Depth: infinity; on a POST, a host's resource limit or a proxy loop
    [InlineData(HttpStatusCode.NetworkAuthenticationRequired, true)] // RFC 6585: the worker's own network, not the receiver
    public void A_5xx_about_what_the_server_does_at_all_is_permanent_but_to_the_gateway(HttpStatusCode status, bool transient)
    {
        Assert.Equal(transient, FailureClassifier.IsTransientStatus(status));
        Assert.Equal(transient, FailureClassifier.IsTransientIdempotentStatus(status));
        Assert.True(FailureClassifier.IsTransientGatewayStatus(status));
    }

    [Theory]
    [InlineData(HttpStatusCode.Conflict, true)]
    [InlineData(HttpStatusCode.MisdirectedRequest, true)] // RFC 9110: may be retried over another connection
    [InlineData(HttpStatusCode.TooManyRequests, true)]
    [InlineData((HttpStatusCode)425, true)]
    [InlineData(HttpStatusCode.ServiceUnavailable, true)]
    [InlineData(HttpStatusCode.NotImplemented, false)]
    [InlineData(HttpStatusCode.BadRequest, false)]
    [InlineData(HttpStatusCode.PaymentRequired, false)]
    [InlineData(HttpStatusCode.UnprocessableEntity, false)]
    public void A_remote_side_that_keeps_idempotency_keys_may_answer_409_otherwise_later(HttpStatusCode status, bool transient) =>
        Assert.Equal(transient, FailureClassifier.IsTransientIdempotentStatus(status));

    [Theory]
    [InlineData(HttpStatusCode.NotImplemented, true)]
    [InlineData(HttpStatusCode.HttpVersionNotSupported, true)]
    [InlineData(HttpStatusCode.ServiceUnavailable, true)]
    [InlineData(HttpStatusCode.Conflict, true)]
    [InlineData(HttpStatusCode.MisdirectedRequest, true)]
    [InlineData(HttpStatusCode.TooManyRequests, true)]
    [InlineData((HttpStatusCode)425, true)]
    [InlineData(HttpStatusCode.BadRequest, false)]
    [InlineData(HttpStatusCode.NotFound, false)]
    [InlineData(HttpStatusCode.PaymentRequired, false)]
    public void The_payment_gateway_may_answer_any_5xx_otherwise_later(HttpStatusCode status, bool transient) =>
        Assert.Equal(transient, FailureClassifier.IsTransientGatewayStatus(status));

    [Theory]
    [InlineData(600)]
    [InlineData(701)]
    [InlineData(999)]
    public void A_status_beyond_599_is_taken_for_a_server_error_by_every_classifier(int code)
    {
        // RFC 9110 section 15: invalid, to be processed as a 5xx, and an unrecognized 5xx as a 500.
        var status = (HttpStatusCode)code;

        Assert.True(FailureClassifier.IsTransientStatus(status));
        Assert.True(FailureClassifier.IsTransientIdempotentStatus(status));
        Assert.True(FailureClassifier.IsTransientGatewayStatus(status));
        Assert.True(FailureClassifier.IsTransient(new HttpRequestException("x", null, status)));
    }

    [Fact]
    public async Task A_retry_after_date_is_measured_on_the_workers_clock()
    {
        // Far from the system's clock, as a test's clock may be.
        var clock = new StoppedClock(new DateTimeOffset(2031, 5, 4, 3, 2, 1, TimeSpan.Zero));
        using var response = new HttpResponseMessage(HttpStatusCode.ServiceUnavailable);
        response.Headers.RetryAfter = new RetryConditionHeaderValue(clock.GetUtcNow().AddSeconds(30));

        var failure = await Assert.ThrowsAsync<TransientFailureException>(() => HttpFailures.EnsureSuccessAsync(
            response, "The payment gateway", TimeSpan.FromSeconds(1), FailureClassifier.IsTransientStatus, clock, CancellationToken.None));

        Assert.Equal(TimeSpan.FromSeconds(30), failure.RetryAfter);
    }

    [Theory]
    [InlineData("", "The webhook receiver at example.org answered 410 Gone with an empty body")]
    [InlineData("gone for good", "The webhook receiver at example.org answered 410 Gone: gone for good")]
    public async Task A_failed_answers_message_ends_on_its_body_or_says_it_had_none(string body, string expected)
    {
        using var response = new HttpResponseMessage(HttpStatusCode.Gone) { Content = new StringContent(body) };

        var failure = await Assert.ThrowsAsync<PermanentFailureException>(() => HttpFailures.EnsureSuccessAsync(
            response, "The webhook receiver at example.org", TimeSpan.FromSeconds(1), FailureClassifier.IsTransientStatus, TimeProvider.System, CancellationToken.None));

        Assert.Equal(expected, failure.Message);
    }

    [Theory]
    [InlineData(421, "The payment gateway answered 421 MisdirectedRequest: try later")]
    [InlineData(425, "The payment gateway answered 425 TooEarly: try later")]
    [InlineData(520, "The payment gateway answered 520: try later")]
    [InlineData(600, "The payment gateway answered 600 (not a valid HTTP status): try later")]
    public async Task A_failed_answers_message_names_its_status_once_whether_or_not_dotnet_has_a_name_for_it(int code, string expected)
    {
        using var response = new HttpResponseMessage((HttpStatusCode)code) { Content = new StringContent("try later") };

        var failure = await Assert.ThrowsAsync<TransientFailureException>(() => HttpFailures.EnsureSuccessAsync(
            response, "The payment gateway", TimeSpan.FromSeconds(1), FailureClassifier.IsTransientGatewayStatus, TimeProvider.System, CancellationToken.None));

        Assert.Equal(expected, failure.Message);
    }

    [Fact]
    public void Exceptions_are_classified()
    {
        Assert.True(FailureClassifier.IsTransient(new TimeoutException()));
        Assert.True(FailureClassifier.IsTransient(new SocketException()));
        Assert.True(FailureClassifier.IsTransient(new TransientFailureException("down")));
        Assert.True(FailureClassifier.IsTransient(new NpgsqlException("connection reset", new IOException())));
        Assert.True(FailureClassifier.IsTransient(new HttpRequestException("no status")));
        Assert.True(FailureClassifier.IsTransient(new HttpRequestException(HttpRequestError.ConnectionError, "refused")));
        Assert.True(FailureClassifier.IsTransient(new HttpRequestException(HttpRequestError.NameResolutionError, "no such host")));
        Assert.True(FailureClassifier.IsTransient(new HttpRequestException(HttpRequestError.ResponseEnded, "cut off")));
        Assert.False(FailureClassifier.IsTransient(new HttpRequestException(HttpRequestError.ConfigurationLimitExceeded, "headers too large")));
        Assert.False(FailureClassifier.IsTransient(new HttpRequestException(HttpRequestError.VersionNegotiationError, "HTTP/3 only")));
        Assert.False(FailureClassifier.IsTransient(new PermanentFailureException("bad")));
        Assert.False(FailureClassifier.IsTransient(new JsonException("bad json")));
        Assert.False(FailureClassifier.IsTransient(new ArgumentException("bug")));
        Assert.False(FailureClassifier.IsTransient(new OperationCanceledException()));
    }

    [Theory]
    [InlineData("57P01", true)] // admin_shutdown: what a stopping server sends to every session
    [InlineData("57P03", true)] // cannot_connect_now: a starting server
    [InlineData("08006", true)] // connection_failure
    [InlineData("53300", true)] // too_many_connections
    [InlineData("23505", false)] // unique_violation: a bug or bad data, not an outage
    [InlineData("57014", false)] // query_canceled: statement_timeout on a server that is up (retried within the budget, below)
    [InlineData("42P01", true)] // undefined_table: the schema is behind the code (a pod started before its migration)
    [InlineData("42703", true)] // undefined_column: likewise
    [InlineData("42601", false)] // syntax_error: a bug
    [InlineData("28P01", true)] // invalid_password: a wrong or rotated password refuses every message alike
    [InlineData("28000", true)] // invalid_authorization_specification: no such role, may not log in, pg_hba.conf
    [InlineData("3D000", true)] // invalid_catalog_name: the database does not exist (yet)
    [InlineData("42501", true)] // insufficient_privilege: no CONNECT, or a GRANT missing after a migration
    [InlineData("25006", true)] // read_only_sql_transaction: a standby, or a primary set read-only, takes no message's writes
    [InlineData("23503", false)] // foreign_key_violation: the message's own data
    [InlineData("22P02", false)] // invalid_text_representation: the message's own data
    [InlineData("22001", false)] // string_data_right_truncation: the message's own data
    public void Database_outages_are_told_apart_from_errors_in_what_was_asked(string sqlState, bool unavailable)
    {
        var postgres = new PostgresException("x", "FATAL", "FATAL", sqlState);

        Assert.Equal(unavailable, DatabaseFailures.IsUnavailable(postgres));
        Assert.Equal(unavailable, DatabaseFailures.IsUnavailable(new DbUpdateException("wrapped", postgres)));
        Assert.Equal(unavailable || sqlState == PostgresErrorCodes.QueryCanceled, FailureClassifier.IsTransient(postgres));
    }

    [Theory]
    [InlineData("FATAL", true)] // the server refusing the session: ALTER DATABASE ... ALLOW_CONNECTIONS false
    [InlineData("ERROR", false)] // a statement's prerequisite: currval before nextval in this session
    public void Object_not_in_prerequisite_state_is_an_outage_only_when_it_refuses_the_session(string severity, bool unavailable)
    {
        var postgres = new PostgresException("x", severity, severity, PostgresErrorCodes.ObjectNotInPrerequisiteState);

        Assert.Equal(unavailable, DatabaseFailures.IsUnavailable(postgres));
        // Either way retried (Npgsql counts 55000 transient): as an outage without spending the budget.
        Assert.True(FailureClassifier.IsTransient(postgres));
    }

    [Fact]
    public void A_dead_letter_reason_without_a_job_says_unreadable_only_for_a_message_that_could_not_be_read()
    {
        Assert.StartsWith("unreadable message: ", DeadLetterHeadersFilter.ReasonWithoutJob(
            new System.Runtime.Serialization.SerializationException("envelope", new JsonException("bad json"))), StringComparison.Ordinal);
        Assert.StartsWith("database error: ", DeadLetterHeadersFilter.ReasonWithoutJob(
            new DbUpdateException("wrapped", new PostgresException("duplicate key", "ERROR", "ERROR", PostgresErrorCodes.UniqueViolation))), StringComparison.Ordinal);
        Assert.StartsWith("permanent failure; not retried: ", DeadLetterHeadersFilter.ReasonWithoutJob(new PermanentFailureException("declined")), StringComparison.Ordinal);
        Assert.StartsWith("transient failure; every retry and redelivery spent: ", DeadLetterHeadersFilter.ReasonWithoutJob(new TimeoutException("slow")), StringComparison.Ordinal);
    }

    [Fact]
    public void A_client_side_database_failure_is_an_outage_and_an_unrelated_exception_is_not()
    {
        Assert.True(DatabaseFailures.IsUnavailable(new NpgsqlException("Failed to connect", new SocketException())));
        Assert.True(DatabaseFailures.IsUnavailable(new InvalidOperationException("transient", new NpgsqlException("reset"))));
        Assert.False(DatabaseFailures.IsUnavailable(new InvalidOperationException("bug")));
        Assert.True(FailureClassifier.IsTransient(new RequeueRequestedException("store down", new NpgsqlException("reset"))));
    }

    [Fact]
    public void Stored_headers_drop_broker_and_fault_bookkeeping_and_decode_bytes()
    {
        var headers = new Dictionary<string, object>
        {
            ["x-death"] = new List<object> { new Dictionary<string, object>() },
            ["x-first-death-queue"] = Encoding.UTF8.GetBytes("q"),
            ["MT-Fault-Message"] = Encoding.UTF8.GetBytes("boom"),
            ["MT-Reason"] = "fault",
            ["Conveyor-Job-Id"] = Encoding.UTF8.GetBytes("42"),
            ["MT-Activity-Id"] = "abc",
            ["count"] = 3,
        };

        var stored = RedeliveryHeaders.ForStorage(headers);

        Assert.Equal(new Dictionary<string, string> { ["Conveyor-Job-Id"] = "42", ["MT-Activity-Id"] = "abc", ["count"] = "3" }, stored);
        Assert.Equal("3", RedeliveryHeaders.ReadString(headers, "COUNT"));
        Assert.Null(RedeliveryHeaders.ReadString(headers, "absent"));
    }

    [Fact]
    public void In_memory_retry_intervals_double_up_to_the_cap_plus_jitter()
    {
        var intervals = new RetryIntervals(3, TimeSpan.FromMilliseconds(200), TimeSpan.FromSeconds(1), TimeSpan.FromMilliseconds(100));

        Assert.Equal(200, intervals.Interval(0, 0).TotalMilliseconds);
        Assert.Equal(400, intervals.Interval(1, 0).TotalMilliseconds);
        Assert.Equal(1000, intervals.Interval(5, 0).TotalMilliseconds);
        Assert.Equal(250, intervals.Interval(0, 0.5).TotalMilliseconds);
    }

    [Fact]
    public void A_remote_retry_after_is_waited_out_in_memory_only_while_it_fits_in_the_retry_budget()
    {
        // Worst case: 300 + 500 + 1100 ms = 1.9 s.
        var intervals = new RetryIntervals(3, TimeSpan.FromMilliseconds(200), TimeSpan.FromSeconds(1), TimeSpan.FromMilliseconds(100));

        Assert.Equal(TimeSpan.FromMilliseconds(200), intervals.WaitBefore(0, 0, null, TimeSpan.Zero));
        // Shorter than the usual wait: changes nothing.
        Assert.Equal(TimeSpan.FromMilliseconds(200), intervals.WaitBefore(0, 0, TimeSpan.FromMilliseconds(100), TimeSpan.Zero));
        // Longer, but within the budget: waited out.
        Assert.Equal(TimeSpan.FromSeconds(1), intervals.WaitBefore(0, 0, TimeSpan.FromSeconds(1), TimeSpan.Zero));
        // Beyond what is left of the budget: no in-memory retry; the delayed redelivery honours it.
        Assert.Null(intervals.WaitBefore(1, 0, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(1)));
        Assert.Null(intervals.WaitBefore(0, 0, TimeSpan.FromSeconds(30), TimeSpan.Zero));
        // Nor does a usual wait overrun the budget after a long Retry-After was waited out.
        Assert.Null(intervals.WaitBefore(1, 0, null, TimeSpan.FromMilliseconds(1700)));
    }

    [Fact]
    public void With_no_redelivery_to_follow_a_long_retry_after_leaves_every_retry_taken_within_the_budget()
    {
        // Worst case: 300 + 500 + 900 ms = 1.7 s.
        var intervals = new RetryIntervals(3, TimeSpan.FromMilliseconds(200), TimeSpan.FromSeconds(1), TimeSpan.FromMilliseconds(100));

        // Each wait takes what the later retries' worst case leaves, never less than the usual interval.
        var waited = TimeSpan.Zero;
        foreach (var (retry, expected) in new[] { (0, 300), (1, 500), (2, 900) })
        {
            var wait = intervals.WaitBefore(retry, 0, TimeSpan.FromSeconds(30), waited, redeliveryAhead: false);
            Assert.Equal(TimeSpan.FromMilliseconds(expected), wait);
            waited += wait!.Value;
        }

        Assert.Equal(intervals.WorstCaseTotal(), waited);
        // A Retry-After within that room is waited out as asked; a shorter one changes nothing.
        Assert.Equal(TimeSpan.FromMilliseconds(280), intervals.WaitBefore(0, 0, TimeSpan.FromMilliseconds(280), TimeSpan.Zero, redeliveryAhead: false));
        Assert.Equal(TimeSpan.FromMilliseconds(200), intervals.WaitBefore(0, 0, TimeSpan.FromMilliseconds(100), TimeSpan.Zero, redeliveryAhead: false));
        Assert.Equal(TimeSpan.FromMilliseconds(200), intervals.WaitBefore(0, 0, null, TimeSpan.Zero, redeliveryAhead: false));
    }

    [Theory]
    [InlineData(120, 30, 10, true)]
    [InlineData(30, 30, 10, false)]
    [InlineData(120, 30, 120, false)]
    public void The_overdue_threshold_must_exceed_the_dispatchers_own_waits(int overdue, int backoff, int idle, bool valid)
    {
        var options = new DispatcherOptions { OverdueAfterSeconds = overdue, FailedPublishBackoffSeconds = backoff, MaxIdleSeconds = idle };
        var results = new List<ValidationResult>();

        Assert.Equal(valid, Validator.TryValidateObject(options, new ValidationContext(options), results, validateAllProperties: true));
    }

    [Theory]
    [InlineData(20, 25, 30, true)]
    [InlineData(25, 25, 30, false)]
    [InlineData(20, 31, 30, false)]
    public void Shutdown_timeouts_must_be_ordered(int consumer, int bus, int host, bool valid)
    {
        var options = new ShutdownOptions { ConsumerStopTimeoutSeconds = consumer, BusStopTimeoutSeconds = bus, HostShutdownTimeoutSeconds = host };
        var results = new List<ValidationResult>();

        Assert.Equal(valid, Validator.TryValidateObject(options, new ValidationContext(options), results, validateAllProperties: true));
    }

    private sealed class StoppedClock(DateTimeOffset now) : TimeProvider
    {
        public override DateTimeOffset GetUtcNow() => now;
    }
}
