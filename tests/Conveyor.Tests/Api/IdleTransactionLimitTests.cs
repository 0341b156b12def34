using System.Data.Common;
using System.Net;
using Conveyor.Contracts;
using Conveyor.Storage;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;
using Microsoft.EntityFrameworkCore.Diagnostics;
using Microsoft.Extensions.DependencyInjection;

namespace Conveyor.Tests.Api;

/// <summary>
/// A request's transaction that the server ended at the Api's own <c>Database:IdleTransactionLimitSeconds</c>
/// (<c>idle_in_transaction_session_timeout</c>, SQL state 25P03: the Api fell silent in it, a stalled thread or a
/// path to PostgreSQL that broke) is the database being unusable for that request, as ADR 0013 promises for a
/// scheduled submission whose commit does not follow in time: a 503 with <c>Retry-After</c>, nothing written. It
/// was a 500.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class IdleTransactionLimitTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_scheduled_submission_whose_transaction_the_server_ended_for_idling_is_a_503_and_writes_nothing()
    {
        var stall = new StallAfterJobInsert(fixture.ConnectionString);
        await using var api = await fixture.StartApiAsync(
            new Dictionary<string, string?> { ["Database:IdleTransactionLimitSeconds"] = "1" },
            builder => builder.Services.ConfigureDbContext<ConveyorDbContext>(options => options.AddInterceptors(stall)));
        var paymentIds = new List<string>();

        // The one-second limit holds from the transaction's first statement, so a machine that stalls for a second
        // between it and the job's insert has the server end the transaction there: that submission writes nothing
        // either, but never reaches the stall after the insert that this test is about. It is made again, with a
        // new payment, until one does.
        HttpResponseMessage response;
        while (true)
        {
            var paymentId = Guid.NewGuid();
            paymentIds.Add(paymentId.ToString());
            using var content = new StringContent(
                JobRequests.ScheduledChargePayment(paymentId, DateTimeOffset.UtcNow.AddHours(1)), System.Text.Encoding.UTF8, "application/json");
            response = await api.Client.PostAsync(new Uri($"/api/jobs/{JobKinds.ChargePayment}", UriKind.Relative), content);
            if (stall.Stalled)
            {
                break;
            }

            response.Dispose();
            Assert.True(paymentIds.Count < 5, $"{paymentIds.Count} submissions, none of whose transactions lasted until the job's insert");
        }

        using (response)
        {
            Assert.Equal(HttpStatusCode.ServiceUnavailable, response.StatusCode);
            Assert.NotNull(response.Headers.RetryAfter);
            Assert.Equal("application/problem+json", response.Content.Headers.ContentType?.MediaType);
        }

        await using var db = fixture.CreateDbContext();
        Assert.Equal(0, await db.Jobs.CountAsync(j => paymentIds.Contains(j.BusinessKey)));
        Assert.Equal(0, await db.ScheduledMessages.CountAsync());
    }

    /// <summary>
    /// Once, after a scheduled job's row is inserted, leaves its transaction idle until the server has ended the
    /// session for it (waits for the session to disappear from <c>pg_stat_activity</c>: nothing is timed).
    /// </summary>
    private sealed class StallAfterJobInsert(string connectionString) : DbCommandInterceptor
    {
        private int _stalled;

        public bool Stalled => Volatile.Read(ref _stalled) == 1;

        public override async ValueTask<int> NonQueryExecutedAsync(
            DbCommand command, CommandExecutedEventData eventData, int result, CancellationToken cancellationToken = default)
        {
            if (command.CommandText.Contains("INSERT INTO jobs", StringComparison.Ordinal) && Interlocked.Exchange(ref _stalled, 1) == 0)
            {
                var pid = ((Npgsql.NpgsqlConnection)command.Connection!).ProcessID;
                await using var probe = new Npgsql.NpgsqlConnection(connectionString);
                await probe.OpenAsync(cancellationToken);
                await Eventually.AssertAsync(async () =>
                {
                    await using var gone = new Npgsql.NpgsqlCommand("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", probe);
                    gone.Parameters.AddWithValue(pid);
                    Assert.Equal(0L, (long)(await gone.ExecuteScalarAsync(cancellationToken))!);
                });
            }

            return result;
        }
    }
}
