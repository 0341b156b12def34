using System.Diagnostics;
using System.Globalization;
using Conveyor.Contracts.Payments;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using OpenTelemetry.Trace;

namespace Conveyor.Tests.Worker;

/// <summary>
/// The database round trips a message costs, read from the worker's own trace spans (each Npgsql span is
/// one command). Per message, the inbox's own commands and nothing else: a consumer that asks the
/// database for something its claim already read (the job row's first command, for a remote side's
/// Idempotency-Key) costs a round trip per message outside the batch, and cut consume throughput by
/// half (bench/analysis.md).
/// </summary>
[Collection(AloneCollection.Name)]
public sealed class InboxDatabaseSpansTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const int Messages = 20;
    private readonly List<Activity> _spans = [];

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    /// <summary>
    /// Published directly, naming no job: its row is created first, committed on its own, so that it does not wait
    /// for the consumer to commit behind the oldest-first job listing's cursor (ADR 0013); then the inbox transaction.
    /// </summary>
    [Fact]
    public async Task A_charge_on_the_single_message_inbox_costs_its_row_its_claim_a_savepoint_its_success_and_its_ledger_row_and_nothing_more()
    {
        var consumes = await ChargeAsync(inboxBatchSize: 1);

        foreach (var (trace, statements) in consumes)
        {
            Assert.True(
                statements.Select(Kind).SequenceEqual(["row", "claim", "savepoint", "success", "ledger"]),
                $"trace {trace}: {string.Join(" | ", statements)}");
        }
    }

    [Fact]
    public async Task A_charge_on_the_batched_inbox_runs_no_database_command_of_its_own()
    {
        var consumes = await ChargeAsync(inboxBatchSize: 16);

        foreach (var (trace, statements) in consumes)
        {
            Assert.True(statements.Count == 0, $"trace {trace}: {string.Join(" | ", statements)}");
        }

        // The batches' commands are in traces of their own: one span per batch, its claim and apply
        // under it, linked to the consume spans of its messages, each message in one batch.
        var all = Snapshot();
        var batches = all.Where(s => s.Source.Name == "Conveyor" && s.DisplayName == "inbox batch").ToList();
        Assert.NotEmpty(batches);
        Assert.All(batches, batch => Assert.Equal(default, batch.ParentSpanId));
        var linked = batches.SelectMany(b => b.Links).Select(l => l.Context.TraceId.ToHexString()).Order(StringComparer.Ordinal);
        Assert.Equal(consumes.Keys.Select(t => t.ToHexString()).Order(StringComparer.Ordinal), linked);
        Assert.Equal(Messages, batches.Sum(b => (int)b.GetTagItem("messaging.batch.message_count")!));
        var claims = all.Where(s => Statement(s) is { } sql && sql.Contains("WITH input AS", StringComparison.Ordinal)).ToList();
        Assert.Equal(batches.Count, claims.Count);
        // The batch's plan settings ride in its claim's command (ADR 0010's amendment), no round trip of their own.
        Assert.All(claims, claim => Assert.StartsWith("SET LOCAL plan_cache_mode = force_generic_plan;", Statement(claim), StringComparison.Ordinal));
        Assert.All(claims, claim => Assert.Contains(batches, b => b.TraceId == claim.TraceId && b.SpanId == claim.ParentSpanId));
        // A batch's writes take one command: its job rows, then its consumers' ledger rows. No attempt failed,
        // so none deletes an inbox row.
        var commands = all.Where(s => s.Source.Name == "Npgsql" && batches.Any(b => b.TraceId == s.TraceId && b.SpanId == s.ParentSpanId))
            .Select(s => Statement(s)).OfType<string>().ToList();
        var applies = commands.Where(sql => sql.Contains("INSERT INTO jobs", StringComparison.Ordinal)).ToList();
        Assert.Equal(batches.Count, applies.Count);
        Assert.All(applies, sql => Assert.Contains("INSERT INTO \"ledger_entries\"", sql, StringComparison.Ordinal));
        Assert.DoesNotContain(commands, sql => sql.TrimStart().StartsWith("INSERT INTO \"ledger_entries\"", StringComparison.Ordinal));
        Assert.DoesNotContain(commands, sql => sql.Contains("DELETE FROM inbox", StringComparison.Ordinal));
    }

    /// <summary>Charges <see cref="Messages"/> payments; for each message's consume trace, its database statements in order.</summary>
    private async Task<Dictionary<ActivityTraceId, List<string>>> ChargeAsync(int inboxBatchSize)
    {
        ProcessWide.Observe("OpenTelemetry's spans");
        await using var gateway = await FakePaymentGateway.StartAsync();
        var settings = WorkerSettings.With(gateway);
        settings["Telemetry:Tracing"] = "true";
        settings["Consumers:ChargePayment:InboxBatchSize"] = inboxBatchSize.ToString(CultureInfo.InvariantCulture);
        await using (var worker = await fixture.StartWorkerAsync(
            settings, builder => builder.Services.ConfigureOpenTelemetryTracerProvider(tracing => tracing.AddInMemoryExporter(_spans))))
        {
            await using var publisher = await TestPublisher.StartAsync(fixture);
            var payments = Enumerable.Range(0, Messages)
                .Select(i => new ChargePayment { PaymentId = Guid.NewGuid(), AccountId = "acct-spans", AmountMinor = 100 + i, Currency = "EUR" })
                .ToList();
            await Task.WhenAll(payments.Select(p => publisher.PublishAsync(p, Guid.NewGuid())));
            foreach (var payment in payments)
            {
                await fixture.WaitForJobAsync(payment.PaymentId.ToString(), JobStatus.Succeeded);
            }

            await fixture.AssertDrainedAsync(worker, "charge-payment");
        }

        // Stopped: every span has ended and been exported.
        var spans = Snapshot();
        // MassTransit's receive and process spans: one trace per message, continued from its publish.
        var traces = spans.Where(s => s.Source.Name == "MassTransit" && s.Kind == ActivityKind.Consumer).Select(s => s.TraceId).Distinct().ToList();
        Assert.Equal(Messages, traces.Count);
        return traces.ToDictionary(
            trace => trace,
            trace => spans.Where(s => s.TraceId == trace && s.Source.Name == "Npgsql" && Statement(s) is not null)
                .OrderBy(s => s.StartTimeUtc).Select(s => Statement(s)!).ToList());
    }

    private static string Kind(string statement) => statement switch
    {
        _ when statement.StartsWith("INSERT INTO jobs", StringComparison.Ordinal) => "row",
        _ when statement.StartsWith("WITH inbox_row AS", StringComparison.Ordinal) => "claim",
        _ when statement.StartsWith("SAVEPOINT", StringComparison.Ordinal) => "savepoint",
        _ when statement.StartsWith("INSERT INTO ledger_entries", StringComparison.Ordinal) => "ledger",
        _ when statement.StartsWith("UPDATE jobs SET status", StringComparison.Ordinal) => "success",
        _ => statement,
    };

    private static string? Statement(Activity span) => (span.GetTagItem("db.query.text") ?? span.GetTagItem("db.statement")) as string;

    private List<Activity> Snapshot()
    {
        lock (_spans)
        {
            return [.. _spans];
        }
    }
}
