using System.Collections.Concurrent;
using System.Net;
using System.Text.Json;
using Conveyor.Contracts;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Logging;

namespace Conveyor.Tests.Worker;

/// <summary>
/// A job id header is only a claim: when the batched inbox's apply finds the claimed id taken meanwhile,
/// the job's row gets an id of its own, and what the inbox logs from then on must name that one.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class InboxClaimedJobIdLogScopeTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string Exchange = "Conveyor.Contracts.Payments:ChargePayment";
    private const string MessageUrn = "urn:message:Conveyor.Contracts.Payments:ChargePayment";
    private const string BrokenStatusWrite = "inbox_claimed_id_broken_status_write";

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_failure_logged_after_the_batch_took_a_fresh_job_id_names_the_job_id_used()
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        var logs = new ScopedLogs();
        var settings = WorkerSettings.With(gateway).Override(("Consumers:ChargePayment:InboxBatchSize", "64"));
        var (claimed, paymentId) = (Guid.NewGuid(), Guid.NewGuid());
        var key = paymentId.ToString();
        // While the consumer runs (its claim found the id free), another job's row takes the claimed id.
        gateway.OnRequest = () =>
        {
            using var db = fixture.CreateDbContext();
            var now = DateTimeOffset.UtcNow;
            db.Jobs.Add(new Job { Id = claimed, Kind = JobKinds.GenerateReport, BusinessKey = Guid.NewGuid().ToString(), Status = JobStatus.Queued, CreatedAt = now, UpdatedAt = now });
            db.SaveChanges();
        };
        gateway.FailNext(1, HttpStatusCode.BadRequest);
        // The failure path's status write fails once, so the inbox logs a warning after the batch committed.
        await using var trigger = await TestTrigger.CreateAsync(fixture, BrokenStatusWrite, "jobs", $"""
            CREATE SEQUENCE {BrokenStatusWrite};
            CREATE FUNCTION {BrokenStatusWrite}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF nextval('{BrokenStatusWrite}') = 1 THEN
                    RAISE EXCEPTION 'the status of % cannot be written this once', NEW.business_key USING ERRCODE = 'check_violation';
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER {BrokenStatusWrite} BEFORE UPDATE ON jobs FOR EACH ROW WHEN (NEW.business_key = '{key}') EXECUTE FUNCTION {BrokenStatusWrite}();
            """);
        await using var worker = await fixture.StartWorkerAsync(settings, builder => builder.Logging.AddProvider(logs));

        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);
        await PublishChargeAsync(producer, paymentId, claimed);

        ScopedLogs.Entry? warning = null;
        await Eventually.AssertAsync(() =>
        {
            warning = logs.Entries.FirstOrDefault(e => e.Level == LogLevel.Warning && e.Message.Contains("Could not record the failure", StringComparison.Ordinal));
            Assert.NotNull(warning);
            return Task.CompletedTask;
        }, () => PipelineState.DescribeAsync(fixture));
        await using var check = fixture.CreateDbContext();
        var job = await check.Jobs.AsNoTracking().SingleAsync(j => j.Kind == JobKinds.ChargePayment && j.BusinessKey == key);
        Assert.NotEqual(claimed, job.Id);
        Assert.Equal(job.Id, warning!.Scope.GetValueOrDefault("JobId"));
    }

    private static Task PublishChargeAsync(RawAmqpProducer producer, Guid paymentId, Guid claimedJobId)
    {
        var messageId = Guid.NewGuid();
        var envelope = new
        {
            messageId,
            messageType = new[] { MessageUrn },
            sentTime = DateTimeOffset.UtcNow,
            headers = new Dictionary<string, string> { [JobHeaders.JobId] = claimedJobId.ToString() },
            message = new { paymentId, accountId = "acct-claim-scope", amountMinor = 1200, currency = "EUR" },
        };
        return producer.PublishRawAsync(
            Exchange, JsonSerializer.SerializeToUtf8Bytes(envelope, JsonSerializerOptions.Web), RawAmqpProducer.EnvelopeContentType, messageId.ToString());
    }

    /// <summary>Keeps every entry with the values of the scopes it was logged in (innermost last wins).</summary>
    private sealed class ScopedLogs : ILoggerProvider
    {
        private readonly AsyncLocal<ImmutableScopes?> _scopes = new();
        private readonly ConcurrentQueue<Entry> _entries = new();

        public IReadOnlyList<Entry> Entries => [.. _entries];

        public ILogger CreateLogger(string categoryName) => new Logger(this);

        public void Dispose()
        {
        }

        public sealed record Entry(LogLevel Level, string Message, IReadOnlyDictionary<string, object?> Scope);

        private sealed record ImmutableScopes(ImmutableScopes? Parent, IReadOnlyList<KeyValuePair<string, object?>> Values);

        private sealed class Logger(ScopedLogs owner) : ILogger
        {
            public IDisposable? BeginScope<TState>(TState state)
                where TState : notnull
            {
                var parent = owner._scopes.Value;
                var values = state is IEnumerable<KeyValuePair<string, object?>> pairs ? pairs.ToList() : [];
                owner._scopes.Value = new ImmutableScopes(parent, values);
                return new Pop(() => owner._scopes.Value = parent);
            }

            public bool IsEnabled(LogLevel logLevel) => logLevel != LogLevel.None;

            public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
            {
                var chain = new List<ImmutableScopes>();
                for (var scope = owner._scopes.Value; scope is not null; scope = scope.Parent)
                {
                    chain.Add(scope);
                }

                var values = new Dictionary<string, object?>(StringComparer.Ordinal);
                foreach (var pair in Enumerable.Reverse(chain).SelectMany(s => s.Values))
                {
                    values[pair.Key] = pair.Value;
                }

                owner._entries.Enqueue(new Entry(logLevel, formatter(state, exception), values));
            }
        }

        private sealed class Pop(Action pop) : IDisposable
        {
            public void Dispose() => pop();
        }
    }
}
