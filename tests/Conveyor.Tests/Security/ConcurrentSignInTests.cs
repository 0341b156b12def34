using Conveyor.Api.Hosting;
using Conveyor.Api.Security;
using Conveyor.Tests.Infrastructure;
using Microsoft.Extensions.Options;

namespace Conveyor.Tests.Security;

/// <summary>
/// Sign-ins of one key at the same moment, at its session limit: each trims the key's oldest sessions,
/// and must not count another's brand-new session among them. The key keeps exactly its limit of live
/// sessions, the newest ones; none of another key's.
/// </summary>
[Collection(SecondLaneCollection.Name)]
public sealed class ConcurrentSignInTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const int SignIns = 16;
    private static readonly TimeSpan Lifetime = TimeSpan.FromHours(1);

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    public async Task Sign_ins_at_once_leave_the_key_exactly_its_limit_of_live_sessions(int limit)
    {
        var store = new DashboardSessionStore(
            fixture.DbContextFactory(), new IdleTransactions(Options.Create(new IdleTransactionOptions())));
        var other = await store.StartAsync("other-key", Lifetime, limit, CancellationToken.None);

        // Several rounds: the sign-ins of one round start together, so their statements interleave.
        for (var round = 0; round < 4; round++)
        {
            var go = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            var signIns = Enumerable.Range(0, SignIns)
                .Select(_ => Task.Run(async () =>
                {
                    await go.Task;
                    return await store.StartAsync("admin-key", Lifetime, limit, CancellationToken.None);
                }))
                .ToList();
            go.SetResult();
            var ids = await Task.WhenAll(signIns);

            var live = 0;
            foreach (var id in ids)
            {
                live += await store.IsLiveAsync(id, CancellationToken.None) ? 1 : 0;
            }

            Assert.True(live == limit, $"round {round + 1}: {live} live sessions of {SignIns} sign-ins, limit {limit}");
            Assert.True(await store.IsLiveAsync(other, CancellationToken.None), "another key's session ended");
        }
    }
}
