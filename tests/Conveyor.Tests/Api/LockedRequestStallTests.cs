using System.Globalization;
using System.Net;
using System.Net.Http.Json;
using Conveyor.Api.Jobs;
using Conveyor.Contracts;
using Conveyor.Tests.Infrastructure;
using Conveyor.Tests.Security;
using Microsoft.Extensions.Options;
using Npgsql;

namespace Conveyor.Tests.Api;

/// <summary>
/// Requests whose transaction takes an advisory lock other requests wait for: a scheduled job's insert (its
/// Idempotency-Key's lock, shared), a keyed repeat answered with the job of its business id (the key's lock, exclusive,
/// while it records the alias), a dashboard sign-in (its key name's lock, while it trims the name's sessions). When the
/// Api's path to PostgreSQL stops answering once the server has granted the lock (a partition), the session sat idle in
/// its transaction, holding the lock, until the server's TCP keepalive gave up on it (minutes), and every request for
/// the same key or name waited that long. Each of these transactions now tells the server to end it once idle for
/// <c>Database:IdleTransactionLimitSeconds</c> (<c>idle_in_transaction_session_timeout</c>, is_local; 10 s as shipped,
/// <see cref="IdleLimitSeconds"/> here), as a cancel's does (<see cref="CancelStallTests"/>).
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class LockedRequestStallTests(ConveyorFixture fixture) : IAsyncLifetime
{
    /// <summary>The Api's lock classes (the first half of each advisory lock key): an Idempotency-Key's, a dashboard key name's.</summary>
    private const int KeyLockClass = 0x43_4A_4B_59;
    private const int SignInLockClass = 0x43_44_53_53;

    /// <summary>The Api's idle limit in these tests: the shipped 10 s, waited out three times, was most of the class's time.</summary>
    private const int IdleLimitSeconds = 2;

    /// <summary>The idle limit and more than enough to see it act; the keepalive's minutes are far longer.</summary>
    private static readonly TimeSpan Released = TimeSpan.FromSeconds(30);

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_scheduled_submission_cut_off_after_taking_its_key_lock_does_not_hold_it()
    {
        var key = $"stall-{Guid.NewGuid():N}";
        var body = JobRequests.ScheduledChargePayment(Guid.NewGuid(), DateTimeOffset.UtcNow.AddHours(1));
        await using var stalled = await StalledApiAsync();

        // Recording an alias of the key holds it exclusively: the insert waits for its shared lock on the server.
        await StallWhileWaitingAsync(stalled, KeyLockClass, key, exclusive: true,
            token => stalled.Api.Client.PostJobAsync(JobKinds.ChargePayment, body, key, token));

        await Eventually.AssertAsync(
            async () => Assert.True(await TryLockAsync(KeyLockClass, key, exclusive: true), "the key's lock is still held"),
            () => DescribeAsync(),
            Released);
        stalled.Relay.Resume();

        // Nothing was committed: the same request creates its job now.
        using var again = await stalled.Api.Client.PostJobAsync(JobKinds.ChargePayment, body, key);
        Assert.Equal(HttpStatusCode.Accepted, again.StatusCode);
    }

    [Fact]
    public async Task A_keyed_repeat_cut_off_while_recording_its_alias_does_not_hold_the_key()
    {
        var body = JobRequests.ChargePayment(Guid.NewGuid());
        await using var stalled = await StalledApiAsync();
        var accepted = await stalled.Api.Client.AcceptJobAsync(JobKinds.ChargePayment, body);
        var key = $"stall-{Guid.NewGuid():N}";

        // A keyed insert holds the key shared: the repeat waits for the key's exclusive lock on the server.
        await StallWhileWaitingAsync(stalled, KeyLockClass, key, exclusive: false,
            token => stalled.Api.Client.PostJobAsync(JobKinds.ChargePayment, body, key, token));

        await Eventually.AssertAsync(
            async () => Assert.True(await TryLockAsync(KeyLockClass, key, exclusive: false), "the key's lock is still held"),
            () => DescribeAsync(),
            Released);
        stalled.Relay.Resume();

        // The alias was never committed: the same keyed repeat records it now and answers with the job.
        using var again = await stalled.Api.Client.PostJobAsync(JobKinds.ChargePayment, body, key);
        Assert.Equal(HttpStatusCode.Accepted, again.StatusCode);
        Assert.Equal(accepted.JobId, (await again.Content.ReadFromJsonAsync<JobAccepted>())?.JobId);
    }

    [Fact]
    public async Task A_sign_in_cut_off_after_taking_its_key_names_lock_does_not_hold_it()
    {
        await using var stalled = await StalledApiAsync();
        using var browser = DashboardBrowser.Open(stalled.Api.BaseAddress, out _);
        var form = DashboardBrowser.LoginForm(TestKeys.Admin, await DashboardBrowser.FormTokenAsync(browser));

        // Another sign-in of the same key trims its sessions: this one waits for the name's lock on the server.
        await StallWhileWaitingAsync(stalled, SignInLockClass, TestKeys.AdminName, exclusive: true,
            token => browser.PostAsync(new Uri("/dashboard/login", UriKind.Relative), form, token));

        await Eventually.AssertAsync(
            async () => Assert.True(await TryLockAsync(SignInLockClass, TestKeys.AdminName, exclusive: true), "the name's lock is still held"),
            () => DescribeAsync(),
            Released);
        stalled.Relay.Resume();

        await DashboardBrowser.SignInAsync(browser, TestKeys.Admin);
    }

    [Theory]
    [InlineData("0")]
    [InlineData("3601")]
    public async Task An_idle_limit_outside_one_second_to_an_hour_stops_the_Api_from_starting(string seconds)
    {
        var refused = await Assert.ThrowsAsync<OptionsValidationException>(() => fixture.StartApiAsync(
            new Dictionary<string, string?> { ["Database:IdleTransactionLimitSeconds"] = seconds }));
        Assert.Contains("IdleTransactionLimitSeconds", refused.Message, StringComparison.Ordinal);
    }

    /// <summary>
    /// Holds the lock of <paramref name="name"/> in <paramref name="lockClass"/> (exclusively or shared) until
    /// <paramref name="send"/>'s request waits for it on the server; then the relay stalls, the client gives up on the
    /// request, and the lock is let go, so the server grants it to the request's session, whose answer never arrives.
    /// </summary>
    private async Task StallWhileWaitingAsync(
        StalledApi stalled, int lockClass, string name, bool exclusive, Func<CancellationToken, Task<HttpResponseMessage>> send)
    {
        await using var holder = new NpgsqlConnection(fixture.ConnectionString);
        await holder.OpenAsync();
        await using var hold = await holder.BeginTransactionAsync();
        await using (var take = LockCommand(holder, lockClass, name, exclusive, tryOnly: false))
        {
            take.Transaction = hold;
            await take.ExecuteScalarAsync();
        }

        using var aborted = new CancellationTokenSource();
        var request = send(aborted.Token);
        await fixture.WaitForLockWaitersAsync(1);
        stalled.Relay.Stall();
        await aborted.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => request);
        await hold.CommitAsync();
    }

    private async Task<bool> TryLockAsync(int lockClass, string name, bool exclusive)
    {
        await using var connection = new NpgsqlConnection(fixture.ConnectionString);
        await connection.OpenAsync();
        await using var transaction = await connection.BeginTransactionAsync();
        await using var take = LockCommand(connection, lockClass, name, exclusive, tryOnly: true);
        take.Transaction = transaction;
        var taken = (bool)(await take.ExecuteScalarAsync())!;
        await transaction.RollbackAsync();
        return taken;
    }

    private static NpgsqlCommand LockCommand(NpgsqlConnection connection, int lockClass, string name, bool exclusive, bool tryOnly)
    {
        var function = (tryOnly ? "pg_try_advisory_xact_lock" : "pg_advisory_xact_lock") + (exclusive ? string.Empty : "_shared");
        var command = new NpgsqlCommand($"SELECT {function}($1, hashtext($2))", connection);
        command.Parameters.AddWithValue(lockClass);
        command.Parameters.AddWithValue(name);
        return command;
    }

    /// <summary>An Api whose path to PostgreSQL runs through a relay the test can stall; the cancel request's connection waits without bound (<c>Timeout</c> 0).</summary>
    private async Task<StalledApi> StalledApiAsync()
    {
        var database = new NpgsqlConnectionStringBuilder(fixture.ConnectionString);
        var relay = await OutageProxy.ToAsync(database.Host!, database.Port);
        database.Host = "127.0.0.1";
        database.Port = relay.Port;
        database.Timeout = 0;
        var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["ConnectionStrings:Conveyor"] = database.ConnectionString,
            ["RateLimiting:Enabled"] = "false",
            ["Database:IdleTransactionLimitSeconds"] = IdleLimitSeconds.ToString(CultureInfo.InvariantCulture),
        });
        return new StalledApi(relay, api);
    }

    /// <summary>The sessions that hold an advisory lock, and what each is doing.</summary>
    private async Task<string> DescribeAsync()
    {
        await using var connection = new NpgsqlConnection(fixture.ConnectionString);
        await connection.OpenAsync();
        await using var sessions = new NpgsqlCommand(
            """
            SELECT coalesce(string_agg(format('%s %s: %s', a.pid, a.state, left(a.query, 100)), '; '), 'none')
              FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND l.granted
            """, connection);
        return $"sessions: {await sessions.ExecuteScalarAsync()}";
    }

    private sealed record StalledApi(OutageProxy Relay, RunningApp Api) : IAsyncDisposable
    {
        public async ValueTask DisposeAsync()
        {
            Relay.Resume();
            await Api.DisposeAsync();
            await Relay.DisposeAsync();
        }
    }
}
